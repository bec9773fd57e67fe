# From GRUB's multiboot entry (32-bit protected mode, paging off) to
# `rust_main` in 64-bit mode, with what Linux would have set up for a
# process: SSE and XSAVE on, XCR0 holding every state the CPU has of x87,
# SSE, AVX, AVX-512 and the AMX tiles, and a `syscall` that answers
# arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) with 0, as Linux
# does when it grants the tile data.

    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long 0x1BADB002                    # magic
    .long 0x00010000                    # flags: the addresses below
    .long -(0x1BADB002 + 0x00010000)    # checksum
    .long multiboot_header              # header_addr
    .long image_start                   # load_addr
    .long image_end                     # load_end_addr
    .long bss_end                       # bss_end_addr (GRUB zeroes the bss)
    .long start32                       # entry_addr

    .section .bss
    .balign 4096
pml4:       .skip 4096
pdpt:       .skip 4096
page_dirs:  .skip 4 * 4096              # 4 GiB in 2 MiB pages, identity
    .balign 16
stack:      .skip 1 << 20               # an overflow would run into page_dirs:
stack_top:                              # the checks need a few KiB of it

    .section .rodata
    .balign 8
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            # 0x08: 64-bit code, ring 0
    .quad 0x00CF92000000FFFF            # 0x10: data
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .section .text
    .code32
    .globl start32
start32:
    cli
    cld                                 # multiboot leaves the direction flag undefined
    mov $stack_top, %esp
    cmp $0x2BADB002, %eax               # a multiboot loader's mark:
    jne 0f
    mov %ebx, multiboot_info            # then ebx is its information (command line)
0:
    # pml4[0] -> pdpt, pdpt[0..4] -> page_dirs, each entry a 2 MiB page.
    mov $pdpt, %eax
    or $3, %eax
    mov %eax, pml4
    mov $page_dirs, %eax
    or $3, %eax
    xor %ecx, %ecx
1:  mov %eax, pdpt(, %ecx, 8)
    add $4096, %eax
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax                      # present, writable, 2 MiB
    mov %eax, page_dirs(, %ecx, 8)
    mov %ecx, %eax
    shr $11, %eax                       # bits 32.. of the address
    mov %eax, page_dirs + 4(, %ecx, 8)
    inc %ecx
    cmp $4 * 512, %ecx
    jne 2b
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $(1 << 5) | (1 << 9) | (1 << 10) | (1 << 18), %eax  # PAE, OSFXSR, OSXMMEXCPT, OSXSAVE
    mov %eax, %cr4
    mov $0xC0000080, %ecx               # EFER: long mode, syscall
    rdmsr
    or $(1 << 8) | 1, %eax
    wrmsr
    mov %cr0, %eax
    and $~((1 << 3) | (1 << 2)), %eax   # no task-switched trap, no x87 emulation
    or $(1 << 31) | (1 << 1), %eax      # paging, monitor coprocessor
    mov %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $start64

    .code64
start64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    mov $stack_top, %rsp
    # XCR0: x87, SSE, AVX, opmask, ZMM halves, tile config, tile data,
    # those of them the CPU supports (cpuid 0xD, sub-leaf 0).
    mov $0xD, %eax
    xor %ecx, %ecx
    cpuid
    and $0x600E7, %eax
    xor %edx, %edx
    xor %ecx, %ecx
    xsetbv
    # syscall enters `syscall_entry` in ring 0 with flags unmasked.
    mov $0xC0000081, %ecx               # STAR: CS 0x08, SS 0x10
    xor %eax, %eax
    mov $0x00000008, %edx
    wrmsr
    mov $0xC0000082, %ecx               # LSTAR
    lea syscall_entry(%rip), %rax
    mov %rax, %rdx
    shr $32, %rdx
    wrmsr
    mov $0xC0000084, %ecx               # FMASK
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    mov multiboot_info(%rip), %edi
    call rust_main
3:  hlt
    jmp 3b

# Linux's answer to arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA):
# 0 (granted), or `tile_data_answer` where `rust_main` set one. A refusal
# also takes the tile state out of XCR0, so that a tile instruction run
# regardless faults (#UD), as it does (#NM) under Linux. Any other call
# gets -ENOSYS. Keeps every register but rax, rcx and r11, as Linux does
# (the flags too are changed: the caller's asm! does not promise to keep
# them), and uses no stack, since the caller may keep data below its stack
# pointer: xgetbv/xsetbv need ecx = 0 and overwrite edx, so the return
# address moves to r11 and rdx waits in memory.
syscall_entry:
    cmp $158, %rax
    jne 5f
    cmp $0x1023, %rdi
    jne 5f
    cmp $18, %rsi
    jne 5f
    incq tile_data_requests(%rip)
    mov tile_data_answer(%rip), %rax
    test %rax, %rax
    jz 4f
    mov %rcx, %r11
    mov %rdx, saved_rdx(%rip)
    xor %ecx, %ecx
    xgetbv
    and $~0x60000, %eax
    xsetbv
    mov saved_rdx(%rip), %rdx
    mov tile_data_answer(%rip), %rax
    jmp *%r11
4:  jmp *%rcx
5:  mov $-38, %rax
    jmp *%rcx

# An exception stub per vector 0-31, 16 bytes apart: pushes its vector
# and calls `exception` with the stack (vector, error code if any, rip).
    .balign 16
    .globl exception_stubs
exception_stubs:
    .set vector, 0
    .rept 32
    .balign 16
    push $vector
    jmp exception_common
    .set vector, vector + 1
    .endr
exception_common:
    cld                                 # a fault inside memmove's backward copy
    mov %rsp, %rdi
    and $~15, %rsp
    call exception
6:  hlt
    jmp 6b

    .section .data
    .balign 8
    .globl tile_data_requests, tile_data_answer
tile_data_requests: .quad 0
tile_data_answer:   .quad 0
multiboot_info:     .quad 0
saved_rdx:          .quad 0
