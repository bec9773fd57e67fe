//! The bf16 products of `kernels` on every unit the CPU has (AMX tiles
//! included), checked against an f64 product of the bf16-rounded operands,
//! as a freestanding program: no CPU this project runs on has AMX, so
//! `run.sh` boots this under Bochs emulating a Sapphire Rapids.
//!
//! `boot.s` brings the CPU to 64-bit mode with the state a Linux process
//! has (XCR0 with the tile state, a `syscall` that grants the tile data),
//! so that the crate's own detection and permission request run
//! unchanged. With `refuse` on GRUB's command line the emulated OS
//! refuses the tile data instead, and the checks are that AMX is off and
//! the other units still work. The first boot also checks every other
//! routine's AVX-512 instructions: the f32 products against f64, and the
//! element-wise, reduction, normalization, softmax, loss, optimizer,
//! transpose and conversion routines against the scalar backend.
//! Output goes to Bochs's debug port 0xE9; the last line is
//! `amx-emulator: PASS` or a `FAIL` line, and the program then asks Bochs
//! to quit.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::asm;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use kernels::{
    AdamW, Backend, Bf16, Bf16Unit, Cpu, KernelError, Kernels, MatMut, MatRef, Sequential, ValidLen,
};

// The check the crate's own tests run (random operands from a generator
// seeded by the shape, strided and NaN-padded, against f64 within the
// f32 GEMM's bound), written for `alloc` and the public API.
#[path = "../../../kernels/src/tests/freestanding.rs"]
mod freestanding;

use freestanding::{
    assert_close, bf16_packed_views, bf16_product, bf16_random_products, bf16_rows_in_place,
    bf16_tile_edges, bits, Case, Convert, Rng,
};

/// Random shapes per handle (the crate's tests draw 40; the emulator is
/// slower).
const RANDOM_PRODUCTS: usize = 24;

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

extern "C" {
    // Written by the syscall handler in boot.s.
    static mut tile_data_requests: u64;
    static mut tile_data_answer: i64;
    static exception_stubs: u8;
}

/// What the emulated Linux answers a refused tile data request with (the
/// error Linux gives when an alternate signal stack is too small for the
/// AMX state).
const ENOSPC: i64 = -28;

/// Whether GRUB's command line for this program (`multiboot
/// /boot/amx-emulator.bin refuse`) has the word `refuse`, from the
/// multiboot information (0 when no multiboot loader started us).
fn asked_to_refuse(multiboot_info: u32) -> bool {
    let info = multiboot_info as usize as *const u32;
    if info.is_null() {
        return false;
    }
    // SAFETY: GRUB passed the address of its multiboot information, which
    // starts with the flags; bit 2 says word 4 points to a NUL-terminated
    // command line. All of it lies in identity-mapped low memory, untouched
    // until this returns (it runs before anything allocates).
    unsafe {
        if *info & (1 << 2) == 0 {
            return false;
        }
        let text = *info.add(4) as usize as *const u8;
        let mut len = 0;
        while len < 256 && *text.add(len) != 0 {
            len += 1;
        }
        let line = core::slice::from_raw_parts(text, len);
        line.split(|&b| b == b' ').any(|word| word == b"refuse")
    }
}

// ---- console and exit -----------------------------------------------------

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            // SAFETY: port 0xE9 is Bochs's debug console; writing it has no
            // other effect.
            unsafe { asm!("out 0xE9, al", in("al") byte, options(nomem, nostack)) };
        }
        Ok(())
    }
}

macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(Console, $($arg)*);
    }};
}

/// Asks Bochs to quit (its shutdown port), then halts.
fn quit() -> ! {
    for byte in *b"Shutdown" {
        // SAFETY: port 0x8900 is Bochs's shutdown port.
        unsafe { asm!("out dx, al", in("dx") 0x8900u16, in("al") byte, options(nomem, nostack)) };
    }
    loop {
        // SAFETY: halting with interrupts off stops this program.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    // One line: run.sh shows only the lines that start with our name.
    match info.location() {
        Some(at) => say!("amx-emulator: FAIL at {at}: {}", info.message()),
        None => say!("amx-emulator: FAIL: {}", info.message()),
    }
    quit()
}

/// Called by the exception stubs with the stack they left: the vector,
/// then (for vectors 8, 10–14, 17, 21, 29 and 30) an error code, then the
/// faulting rip.
#[no_mangle]
extern "C" fn exception(frame: *const u64) -> ! {
    // SAFETY: the stub pushed the vector, the CPU pushed rip, cs and
    // rflags (after an error code for some vectors) above it.
    let vector = unsafe { *frame };
    let with_code = matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30);
    // SAFETY: as above.
    let (code, rip) = unsafe {
        if with_code {
            (*frame.add(1), *frame.add(2))
        } else {
            (0, *frame.add(1))
        }
    };
    say!("amx-emulator: FAIL: CPU exception {vector} at rip {rip:#x} (error code {code:#x})");
    quit()
}

/// Points vectors 0–31 at the stubs in `boot.s`, 16 bytes apart.
fn install_exception_handlers() {
    static mut IDT: [[u64; 2]; 32] = [[0; 2]; 32];
    // SAFETY: only this function, run once before anything else, touches
    // IDT; `lidt` gets its address and size.
    unsafe {
        let stubs = core::ptr::addr_of!(exception_stubs) as u64;
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (vector, gate) in idt.iter_mut().enumerate() {
            let at = stubs + 16 * vector as u64;
            // Offset 0..16, selector 0x08, present interrupt gate, offset
            // 16..32, then offset 32..64.
            gate[0] = (at & 0xFFFF) | (0x08 << 16) | (0x8E00 << 32) | ((at >> 16 & 0xFFFF) << 48);
            gate[1] = at >> 32;
        }
        #[repr(C, packed)]
        struct Pointer {
            limit: u16,
            base: u64,
        }
        let pointer = Pointer {
            limit: (core::mem::size_of_val(idt) - 1) as u16,
            base: idt.as_ptr() as u64,
        };
        asm!("lidt [{}]", in(reg) &pointer, options(nostack));
    }
}

// ---- memory ---------------------------------------------------------------

/// A bump allocator over 1 GiB of RAM from 512 MiB (run.sh gives the
/// machine 2 GiB, Bochs 3.0's cap on the memory it takes from the host,
/// and the BIOS keeps its tables at the top; GRUB and this program live
/// below 16 MiB). The last
/// allocation is returned on free, which is enough for these tests'
/// vectors.
struct Bump {
    next: AtomicUsize,
}

const HEAP: usize = 512 << 20;
const HEAP_END: usize = HEAP + (1 << 30);

// SAFETY: every block handed out is fresh memory of the requested size
// and alignment inside the heap, never handed out twice while live (only
// the most recent block is taken back on free); the heap is RAM no one
// else uses.
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = self
            .next
            .load(Ordering::Relaxed)
            .next_multiple_of(layout.align());
        let end = start + layout.size();
        if end > HEAP_END {
            return core::ptr::null_mut();
        }
        self.next.store(end, Ordering::Relaxed);
        start as *mut u8
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ptr as usize + layout.size() == self.next.load(Ordering::Relaxed) {
            self.next.store(ptr as usize, Ordering::Relaxed);
        }
    }
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: AtomicUsize::new(HEAP),
};

// ---- what the compiler and the precompiled `alloc` expect of a libc ----

/// `alloc` names the unwinder; with `panic = "abort"` nothing unwinds.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    quit()
}

/// `alloc` names an unwinding personality; with `panic = "abort"` it is
/// never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

// The C memory functions, with C's contracts (valid, non-overlapping
// ranges for memcpy, and so on), which every caller (compiled code) keeps.
// `rep movsb`/`rep stosb` keep the compiler from turning them into calls
// to themselves; the ABI leaves the direction flag clear.

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: C's contract: `n` bytes are readable at `src`, writable at
    // `dst`, and the ranges do not overlap.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack));
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        // SAFETY: as memcpy; copying forwards is right when dst is below
        // src or past its end.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: C's contract (`n` bytes readable at `src`, writable at
    // `dst`); dst lies inside src's range, so n > 0 and copying backwards
    // from the last byte reads each byte before it is overwritten.
    unsafe {
        asm!(
            "std", "rep movsb", "cld",
            inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
            options(nostack)
        );
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    // SAFETY: C's contract: `n` bytes are writable at `dst`.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, in("al") value as u8, inout("rcx") n => _, options(nostack));
    }
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: C's contract: `n` bytes are readable at `a` and at `b`.
        // Volatile reads keep the loop from becoming a call to memcmp.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as memcmp.
    unsafe { memcmp(a, b, n) }
}

// ---- the checks -----------------------------------------------------------

/// `amx on avx512`: a handle's bf16 unit and backend, for messages.
fn label(kern: Kernels) -> alloc::string::String {
    alloc::format!("{} on {}", kern.bf16_unit(), kern.backend())
}

#[no_mangle]
extern "C" fn rust_main(multiboot_info: u32) -> ! {
    install_exception_handlers();
    let refuse = asked_to_refuse(multiboot_info);
    if refuse {
        // SAFETY: read only by the syscall handler, which has not run yet.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(tile_data_answer), ENOSPC) };
    }
    let cpu = Cpu::detected();
    say!("amx-emulator: {} ({})", cpu.model(), cpu.caches());
    say!(
        "amx-emulator: backend {}, bf16 unit {}, AMX refused: {:?}",
        Backend::detected(),
        Bf16Unit::detected(),
        Bf16Unit::amx_refused()
    );
    // SAFETY: written only by the syscall handler, which has returned.
    let requests = unsafe { core::ptr::read_volatile(core::ptr::addr_of_mut!(tile_data_requests)) };
    say!("amx-emulator: tile data requested {requests} time(s)");
    assert!(
        requests == 1,
        "detection asked for the tile data {requests} times, not once"
    );
    let best = Kernels::new(Backend::Avx512).expect("no AVX-512 on the emulated CPU");
    say!("amx-emulator: f32 blocking {}", best.gemm_blocking());
    if refuse {
        refused(best)
    } else {
        granted(best)
    }
    say!("amx-emulator: PASS");
    quit()
}

/// The OS granted the tile data: every unit on every backend, then
/// evidence that the AMX handle ran on tiles.
fn granted(best: Kernels) {
    assert!(
        best.bf16_unit() == Bf16Unit::Amx,
        "the best handle's unit is {}",
        best.bf16_unit()
    );
    // The portable path on every backend first: it checks the emulator's
    // f32 arithmetic before the bf16 units rely on it.
    let mut handles: Vec<Kernels> = Backend::ALL
        .into_iter()
        .map(|b| {
            Kernels::new(b)
                .unwrap()
                .with_bf16_unit(Bf16Unit::Portable)
                .unwrap()
        })
        .collect();
    let pairs = best.with_bf16_unit(Bf16Unit::Avx512Bf16).unwrap();
    handles.push(pairs);
    handles.push(best);
    for kern in handles {
        check_unit(kern);
    }
    check_exp_family(best);
    check_f32_products(best);
    check_other_routines(best);
    // The tiles add in another order than `vdpbf16ps`: if no last bit
    // differs from the pair unit's, the tile path did not run.
    let case = Case {
        m: 64,
        n: 64,
        k: 256,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let [on_pairs, on_tiles] = [pairs, best].map(|kern| {
        let same: (Convert<f32>, Convert<f32>) = (|x| x, |x| x);
        bits(&bf16_product(
            &label(kern),
            kern,
            &Sequential,
            case,
            same,
            (f32::NAN, f32::NAN),
        ))
    });
    let differ = on_pairs
        .iter()
        .zip(&on_tiles)
        .filter(|(p, t)| p != t)
        .count();
    say!("amx-emulator: tiles and pair dot products differ in the last bits of {differ} of 4096 sums");
    assert!(
        differ > 0,
        "the AMX handle gave the pair unit's bits: the tiles did not run"
    );
}

/// The OS refused the tile data: AMX is off with the OS's error, forcing
/// it is an error naming the permission, and AVX512-BF16 still runs.
fn refused(best: Kernels) {
    assert!(
        Bf16Unit::amx_refused() == Some(ENOSPC),
        "amx_refused: {:?}",
        Bf16Unit::amx_refused()
    );
    assert!(
        best.bf16_unit() == Bf16Unit::Avx512Bf16,
        "the best handle's unit is {}",
        best.bf16_unit()
    );
    let forced = best.with_bf16_unit(Bf16Unit::Amx);
    assert!(
        forced == Err(KernelError::AmxPermissionRefused(ENOSPC)),
        "forcing AMX gave {forced:?}"
    );
    say!("amx-emulator: forcing AMX: {}", forced.unwrap_err());
    check_unit(best);
}

/// The crate's freestanding bf16 checks on one handle (random shapes and
/// operand types, the tile edges, packed operands), and its peak loop.
fn check_unit(kern: Kernels) {
    let name = label(kern);
    bf16_random_products(&name, kern, 7, RANDOM_PRODUCTS);
    bf16_tile_edges(&name, kern);
    bf16_rows_in_place(&name, kern);
    bf16_packed_views(&name, kern);
    let flops = kern.bf16_peak_loop(10);
    say!("amx-emulator: {name}: every check passed; peak loop {flops} flop");
}

/// The routines built on the vectorized exp (exp, GELU both ways, softmax,
/// cross-entropy) on `kern` against the scalar backend, with the crate's
/// test tolerances, on lengths around the vector and block edges: the one
/// place a host without AVX-512 runs their AVX-512 instructions.
fn check_exp_family(kern: Kernels) {
    let scalar = Kernels::new(Backend::Scalar).unwrap();
    let name = kern.backend();
    let mut rng = Rng::new(3);
    for n in [1, 15, 16, 17, 127, 128, 129, 257, 1000] {
        let mut x = rng.vec(n, -12.0, 12.0);
        x[0] = [f32::NAN, f32::INFINITY, -0.0, -200.0][n % 4];
        let what = |op: &str| alloc::format!("{op} on {name}, n {n}");
        type Unary = fn(&Kernels, &[f32], &mut [f32]) -> Result<(), KernelError>;
        let unary: [(&str, Unary, f32, f32); 2] = [
            ("exp", Kernels::exp, 3e-7, 0.0),
            ("gelu_forward", Kernels::gelu_forward, 1e-5, 1e-6),
        ];
        for (op, f, rel, abs) in unary {
            let (mut want, mut got) = (alloc::vec![0.0; n], alloc::vec![f32::NAN; n]);
            f(&scalar, &x, &mut want).unwrap();
            f(&kern, &x, &mut got).unwrap();
            assert_close(&what(op), &got, &want, rel, abs);
        }
        let dout = rng.vec(n, -1.0, 1.0);
        let dx = rng.vec(n, -1.0, 1.0);
        let (mut want, mut got) = (dx.clone(), dx);
        scalar.gelu_backward(&x, &dout, &mut want).unwrap();
        kern.gelu_backward(&x, &dout, &mut got).unwrap();
        assert_close(&what("gelu_backward"), &got, &want, 2e-5, 2e-6);

        let rows = 3;
        let scores = rng.vec(rows * n, -30.0, 30.0);
        for valid in [ValidLen::All, ValidLen::Causal { offset: 2 }] {
            let (mut want, mut got) = (scores.clone(), scores.clone());
            scalar.softmax_rows(&mut want, n, valid).unwrap();
            kern.softmax_rows(&mut got, n, valid).unwrap();
            assert_close(&what("softmax_rows"), &got, &want, 2e-6, 1e-9);
        }
        let targets: Vec<u32> = (0..rows).map(|_| rng.below(n) as u32).collect();
        let [want, got] = [scalar, kern].map(|k| {
            let (mut losses, mut d) =
                (alloc::vec![f32::NAN; rows], alloc::vec![f32::NAN; rows * n]);
            k.cross_entropy(&scores, n, &targets, &mut losses, Some(&mut d), 0.25)
                .unwrap();
            (losses, d)
        });
        assert_close(&what("cross_entropy losses"), &got.0, &want.0, 1e-5, 1e-5);
        assert_close(&what("cross_entropy gradient"), &got.1, &want.1, 1e-5, 1e-7);
    }
    say!("amx-emulator: exp, GELU, softmax and cross-entropy on {name}: every check passed");
}

/// The f32 products on `kern` (its AVX-512 microkernel) against an f64
/// product, within the bound of a k-term f32 sum: every transpose, A
/// packed and read in place, the default blocking and one of a single
/// tile per block (so every block edge is crossed), the small-m and split
/// paths, a NaN-filled C and guard zones past it.
fn check_f32_products(kern: Kernels) {
    let b = kern.gemm_blocking();
    let (mr, nr) = (b.mr, b.nr);
    let shapes = [
        (1, 1, 1),
        (mr + 3, nr + 5, 7),
        (2 * mr + 1, 2 * nr + 3, 300),
        (3, nr + 5, 37),
        (1, 300, 1000),
    ];
    let tight = kern.with_gemm_blocking(mr, 4, nr).unwrap();
    let mut rng = Rng::new(5);
    for handle in [kern, tight] {
        for (a_lines, b_sweep) in [(0, 1), (usize::MAX, 1), (0, 2), (usize::MAX, 2)] {
            let handle = handle
                .with_gemm_a_packing(a_lines, 0)
                .with_gemm_b_sweep(b_sweep);
            for &(m, n, k) in &shapes {
                for trans in 0..4 {
                    let (trans_a, trans_b) = (trans & 1 == 1, trans & 2 == 2);
                    let a = rng.vec(m * k, -1.0, 1.0);
                    let bm = rng.vec(k * n, -1.0, 1.0);
                    let c0 = rng.vec(m * n, -1.0, 1.0);
                    // Element (i, p) of A and (p, j) of B, wherever stored.
                    let at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
                    let bt = |p: usize, j: usize| {
                        if trans_b {
                            bm[j * k + p]
                        } else {
                            bm[p * n + j]
                        }
                    };
                    let a_view = match trans_a {
                        false => MatRef::new(&a, m, k).unwrap(),
                        true => MatRef::new(&a, k, m).unwrap().t(),
                    };
                    let b_view = match trans_b {
                        false => MatRef::new(&bm, k, n).unwrap(),
                        true => MatRef::new(&bm, n, k).unwrap().t(),
                    };
                    let (alpha, beta) = (-0.5, 0.25);
                    let guard = 64;
                    let mut c = alloc::vec![f32::NAN; m * n + guard];
                    c[..m * n].copy_from_slice(&c0);
                    c[m * n..].fill(-7.0);
                    let mut ws = alloc::vec![f32::NAN; handle.gemm_workspace_len(m, n, k)];
                    let out = MatMut::new(&mut c[..m * n], m, n).unwrap();
                    handle
                        .gemm_with(&Sequential, alpha, a_view, b_view, beta, out, &mut ws)
                        .unwrap();
                    let what = alloc::format!(
                        "f32 gemm on {}, {m}x{k}x{n}, transposes {trans_a} {trans_b}, A lines {a_lines}, blocking {}",
                        kern.backend(),
                        handle.gemm_blocking()
                    );
                    assert!(
                        c[m * n..].iter().all(|&v| v == -7.0),
                        "{what}: wrote past C"
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let (mut sum, mut size) = (0.0f64, 0.0f64);
                            for p in 0..k {
                                let term = f64::from(at(i, p)) * f64::from(bt(p, j));
                                sum += term;
                                size += term.abs();
                            }
                            let c_in = f64::from(c0[i * n + j]);
                            let want = f64::from(alpha) * sum + f64::from(beta) * c_in;
                            let bound = (k as f64 + 4.0)
                                * f64::from(f32::EPSILON)
                                * (0.5 * size + 0.25 * c_in.abs());
                            let got = f64::from(c[i * n + j]);
                            assert!(
                                (got - want).abs() <= bound,
                                "{what}: C[{i}][{j}] = {got}, want {want} ± {bound}"
                            );
                        }
                    }
                }
            }
        }
    }
    say!(
        "amx-emulator: f32 products on {}: every check passed",
        kern.backend()
    );
}

/// Every routine not checked above on `kern` against the scalar backend,
/// with the crate's test tolerances, on lengths around the vector and
/// block edges, outputs NaN-filled.
fn check_other_routines(kern: Kernels) {
    let scalar = Kernels::new(Backend::Scalar).unwrap();
    let name = kern.backend();
    let mut rng = Rng::new(9);
    for n in [1, 15, 16, 17, 127, 128, 129, 257, 1000] {
        let what = |op: &str| alloc::format!("{op} on {name}, n {n}");
        let (a, b) = (rng.vec(n, -3.0, 3.0), rng.vec(n, -3.0, 3.0));
        type Binary = fn(&Kernels, &[f32], &[f32], &mut [f32]) -> Result<(), KernelError>;
        let binary: [(&str, Binary); 3] = [
            ("add", Kernels::add),
            ("sub", Kernels::sub),
            ("mul", Kernels::mul),
        ];
        for (op, f) in binary {
            let [want, got] = [scalar, kern].map(|k| {
                let mut out = alloc::vec![f32::NAN; n];
                f(&k, &a, &b, &mut out).unwrap();
                out
            });
            assert_close(&what(op), &got, &want, 0.0, 0.0);
        }
        let [want, got] = [scalar, kern].map(|k| {
            let mut out = alloc::vec![f32::NAN; n];
            k.tanh(&a, &mut out).unwrap();
            out
        });
        assert_close(&what("tanh"), &got, &want, 3e-7, 0.0);
        let [want, got] = [scalar, kern].map(|k| {
            let mut y = b.clone();
            k.axpy(0.75, &a, &mut y).unwrap();
            k.scale(-1.5, &mut y);
            y
        });
        // FMA rounds once where the reference rounds twice.
        assert_close(&what("axpy, scale"), &got, &want, 1e-6, 1e-6);
        // Sums in another order: the two differ by at most twice the
        // bound of an n-term f32 sum of these terms.
        let size = |terms: &mut dyn Iterator<Item = f32>| terms.map(f32::abs).sum::<f32>();
        for (op, want, got, terms) in [
            (
                "sum",
                scalar.sum(&a),
                kern.sum(&a),
                size(&mut a.iter().copied()),
            ),
            (
                "dot",
                scalar.dot(&a, &b).unwrap(),
                kern.dot(&a, &b).unwrap(),
                size(&mut a.iter().zip(&b).map(|(x, y)| x * y)),
            ),
            (
                "sum_squares",
                scalar.sum_squares(&a),
                kern.sum_squares(&a),
                size(&mut a.iter().map(|x| x * x)),
            ),
        ] {
            let bound = 2.0 * n as f32 * f32::EPSILON * terms;
            assert!(
                (got - want).abs() <= bound,
                "{}: {got}, want {want} ± {bound}",
                what(op)
            );
        }
        assert!(kern.max(&a) == scalar.max(&a), "{}", what("max"));

        // Rows of n columns: bias, normalization, softmax backward.
        let rows = 3;
        let x = rng.vec(rows * n, -2.0, 2.0);
        let (gamma, beta) = (rng.vec(n, 0.5, 1.5), rng.vec(n, -0.5, 0.5));
        let [want, got] = [scalar, kern].map(|k| {
            let mut y = x.clone();
            k.add_bias(&beta, &mut y).unwrap();
            y
        });
        assert_close(&what("add_bias"), &got, &want, 0.0, 0.0);
        let [want, got] = [scalar, kern].map(|k| {
            let mut out = alloc::vec![f32::NAN; rows * n];
            let (mut mean, mut rstd) = (alloc::vec![f32::NAN; rows], alloc::vec![f32::NAN; rows]);
            k.layer_norm_forward(&x, &gamma, &beta, 1e-5, &mut out, &mut mean, &mut rstd)
                .unwrap();
            (out, mean, rstd)
        });
        assert_close(&what("layer_norm_forward"), &got.0, &want.0, 1e-5, 1e-5);
        assert_close(&what("layer_norm mean"), &got.1, &want.1, 1e-6, 1e-6);
        assert_close(&what("layer_norm rstd"), &got.2, &want.2, 1e-4, 0.0);
        let (mean, rstd) = (want.1, want.2);
        let dout = rng.vec(rows * n, -1.0, 1.0);
        let [want, got] = [scalar, kern].map(|k| {
            let (mut dx, mut dg, mut db) = (x.clone(), gamma.clone(), beta.clone());
            k.layer_norm_backward(&x, &gamma, &mean, &rstd, &dout, &mut dx, &mut dg, &mut db)
                .unwrap();
            (dx, dg, db)
        });
        assert_close(&what("layer_norm_backward dx"), &got.0, &want.0, 1e-4, 1e-4);
        assert_close(
            &what("layer_norm_backward dgamma"),
            &got.1,
            &want.1,
            1e-4,
            1e-4,
        );
        assert_close(
            &what("layer_norm_backward dbeta"),
            &got.2,
            &want.2,
            1e-4,
            1e-4,
        );
        let mut probs = rng.vec(rows * n, -5.0, 5.0);
        scalar.softmax_rows(&mut probs, n, ValidLen::All).unwrap();
        for valid in [ValidLen::All, ValidLen::Causal { offset: 2 }] {
            let [want, got] = [scalar, kern].map(|k| {
                let mut grad = dout.clone();
                k.softmax_backward_rows(&probs, &mut grad, n, valid)
                    .unwrap();
                grad
            });
            assert_close(&what("softmax_backward_rows"), &got, &want, 1e-5, 1e-7);
        }

        // One AdamW step, with clipping's scale.
        let opt = AdamW::default();
        let grads = rng.vec(n, -1.0, 1.0);
        let [want, got] = [scalar, kern].map(|k| {
            let (mut p, mut m, mut v) = (
                a.clone(),
                b.clone(),
                grads.iter().map(|g| g * g).collect::<Vec<_>>(),
            );
            k.adamw_step(&opt, 3, 0.5, &mut p, &grads, &mut m, &mut v)
                .unwrap();
            (p, m, v)
        });
        assert_close(&what("adamw params"), &got.0, &want.0, 1e-5, 1e-7);
        assert_close(&what("adamw m"), &got.1, &want.1, 1e-5, 1e-7);
        assert_close(&what("adamw v"), &got.2, &want.2, 1e-5, 1e-7);

        // A transpose of rows × n, strided both ways.
        let (src_stride, dst_stride) = (n + 3, rows + 1);
        let src = rng.vec(rows * src_stride, -1.0, 1.0);
        let [want, got] = [scalar, kern].map(|k| {
            let mut dst = alloc::vec![f32::NAN; n * dst_stride];
            k.transpose(rows, n, &src, src_stride, &mut dst, dst_stride)
                .unwrap();
            dst
        });
        assert_eq!(bits(&got), bits(&want), "{}", what("transpose"));

        // bf16 both ways, specials included, from an odd offset.
        let mut wide = rng.vec(n + 1, -3.0, 3.0);
        wide[1] = [f32::NAN, f32::INFINITY, -0.0, 1e-40][n % 4];
        let [want, got] = [scalar, kern].map(|k| {
            let mut half = alloc::vec![Bf16::default(); n];
            k.f32_to_bf16(&wide[1..], &mut half).unwrap();
            let mut back = alloc::vec![f32::NAN; n];
            k.bf16_to_f32(&half, &mut back).unwrap();
            back
        });
        assert_eq!(
            bits(&got),
            bits(&want),
            "{}",
            what("f32_to_bf16, bf16_to_f32")
        );
    }
    say!("amx-emulator: element-wise, reductions, LayerNorm, softmax backward, AdamW, transpose, bf16 conversion on {name}: every check passed");
}
