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
//! the other units still work. Output goes to Bochs's debug port 0xE9;
//! the last line is `amx-emulator: PASS` or a `FAIL` line, and the
//! program then asks Bochs to quit.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::alloc::{GlobalAlloc, Layout};
use core::arch::asm;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

use kernels::{
    Backend, Bf16, Bf16Input, Bf16Unit, Cpu, Executor, KernelError, Kernels, MatMut, MatRef,
    PackedBf16, Sequential,
};

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax));

extern "C" {
    static tile_data_requests: u64;
    static mut tile_data_answer: i64;
    static exception_stubs: u8;
}

/// What the emulated Linux answers a refused tile data request with (the
/// error Linux gives when an alternate signal stack is too small for the
/// AMX state).
const ENOSPC: i64 = -28;

/// The words of GRUB's command line for this program (`multiboot
/// /boot/amx-emulator.bin refuse`), from the multiboot information.
fn command_line(multiboot_info: u32) -> &'static str {
    let info = multiboot_info as usize as *const u32;
    // SAFETY: GRUB passed the address of its multiboot information, which
    // starts with the flags; bit 2 says word 4 points to a NUL-terminated
    // command line. All of it lies in identity-mapped low memory.
    unsafe {
        if info.is_null() || *info & (1 << 2) == 0 {
            return "";
        }
        let text = *info.add(4) as usize as *const u8;
        let mut len = 0;
        while len < 256 && *text.add(len) != 0 {
            len += 1;
        }
        core::str::from_utf8(core::slice::from_raw_parts(text, len)).unwrap_or("")
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
    say!("amx-emulator: FAIL: {info}");
    quit()
}

/// Called by the exception stubs with the stack they left: the vector,
/// then (for some vectors) an error code, then the faulting rip.
#[no_mangle]
extern "C" fn exception(frame: *const u64) -> ! {
    // SAFETY: the stub pushed the vector, the CPU pushed at least rip, cs
    // and rflags above it.
    let words = unsafe { [*frame, *frame.add(1), *frame.add(2), *frame.add(3)] };
    say!(
        "amx-emulator: FAIL: CPU exception {} (stack: {:#x} {:#x} {:#x})",
        words[0],
        words[1],
        words[2],
        words[3]
    );
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

/// A bump allocator over 1 GiB of RAM at 1 GiB (Bochs gives the machine
/// 3 GiB; GRUB and this program live below 16 MiB). The last allocation
/// is returned on free, which is enough for these tests' vectors.
struct Bump {
    next: AtomicUsize,
}

const HEAP: usize = 1 << 30;
const HEAP_END: usize = 2 << 30;

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

// The C library functions the compiler calls; there is no libc here.
// `rep movsb`/`rep stosb` keep the compiler from calling them recursively.

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack));
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        return memcpy(dst, src, n);
    }
    // Overlapping with dst above src: copy backwards.
    asm!(
        "std", "rep movsb", "cld",
        inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _, inout("rcx") n => _,
        options(nostack)
    );
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, value: i32, n: usize) -> *mut u8 {
    asm!("rep stosb", inout("rdi") dst => _, in("al") value as u8, inout("rcx") n => _, options(nostack));
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        let (x, y) = (
            core::ptr::read_volatile(a.add(i)),
            core::ptr::read_volatile(b.add(i)),
        );
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// The precompiled `alloc` names an unwinding personality; with
/// `panic = "abort"` it is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

// ---- the checks -----------------------------------------------------------

/// xorshift64*: the same operands on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len)
            .map(|_| lo + (hi - lo) * (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .collect()
    }
}

/// A `rows × cols` matrix stored from an odd offset with `pad` spare
/// elements per row, the spares filled with `fill`.
struct Stored<T> {
    buf: Vec<T>,
    rows: usize,
    cols: usize,
    stride: usize,
}

const OFFSET: usize = 3;

impl<T: Copy> Stored<T> {
    fn new(
        values: &[f32],
        rows: usize,
        cols: usize,
        pad: usize,
        fill: T,
        to: fn(f32) -> T,
    ) -> Self {
        let stride = cols + pad;
        let mut buf = vec![fill; OFFSET + rows * stride + 2];
        for r in 0..rows {
            for c in 0..cols {
                buf[OFFSET + r * stride + c] = to(values[r * cols + c]);
            }
        }
        Stored {
            buf,
            rows,
            cols,
            stride,
        }
    }
    fn view(&self, transposed: bool) -> MatRef<'_, T> {
        let v = MatRef::strided(&self.buf[OFFSET..], self.rows, self.cols, self.stride).unwrap();
        if transposed {
            v.t()
        } else {
            v
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
}

/// How a test value becomes an operand element.
type Convert<T> = fn(f32) -> T;

fn rounded(x: f32) -> f64 {
    f64::from(Bf16::from_f32(x).to_f32())
}

/// Runs `case` on `kern` with operands of types `A` and `B` (spares and,
/// for `beta = 0`, C filled with NaN), checks every element of C against
/// f64 within the kernels tests' bound, (k + 2)·2⁻²⁴·(|alpha|·Σ|a·b| +
/// |beta·c|) doubled, and returns C.
fn run<A: Bf16Input, B: Bf16Input>(
    kern: Kernels,
    exec: &dyn Executor,
    case: Case,
    to: (Convert<A>, Convert<B>),
    nan: (A, B),
) -> Vec<f32> {
    let Case {
        m,
        n,
        k,
        trans_a,
        trans_b,
        alpha,
        beta,
    } = case;
    let mut rng = Rng((m * 1000 + n * 10 + k + 1) as u64);
    let (a_vals, b_vals) = (rng.vec(m * k, -2.0, 2.0), rng.vec(k * n, -2.0, 2.0));
    let c_vals = rng.vec(m * n, -1.0, 1.0);
    let (ar, ac) = if trans_a { (k, m) } else { (m, k) };
    let (br, bc) = if trans_b { (n, k) } else { (k, n) };
    let a = Stored::new(&a_vals, ar, ac, 1, nan.0, to.0);
    let b = Stored::new(&b_vals, br, bc, 2, nan.1, to.1);
    let op_a = |i: usize, l: usize| {
        if trans_a {
            a_vals[l * ac + i]
        } else {
            a_vals[i * ac + l]
        }
    };
    let op_b = |l: usize, j: usize| {
        if trans_b {
            b_vals[j * bc + l]
        } else {
            b_vals[l * bc + j]
        }
    };
    let mut c = if beta == 0.0 {
        vec![f32::NAN; m * n]
    } else {
        c_vals.clone()
    };
    let mut ws = vec![f32::NAN; kern.gemm_bf16_workspace_len(m, n, k)];
    let out = MatMut::new(&mut c, m, n).unwrap();
    kern.gemm_bf16_with(
        exec,
        alpha,
        a.view(trans_a),
        b.view(trans_b),
        beta,
        out,
        &mut ws,
    )
    .unwrap_or_else(|e| panic!("{} {case:?}: {e}", kern.bf16_unit()));
    let u = f64::from(f32::EPSILON) / 2.0;
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut mag) = (0.0, 0.0);
            for l in 0..k {
                let p = rounded(op_a(i, l)) * rounded(op_b(l, j));
                sum += p;
                mag += if p < 0.0 { -p } else { p };
            }
            let c_term = if beta == 0.0 {
                0.0
            } else {
                f64::from(beta) * f64::from(c_vals[i * n + j])
            };
            let want = f64::from(alpha) * sum + c_term;
            let tol =
                2.0 * (k as f64 + 2.0) * u * (f64::from(alpha).abs() * mag + c_term.abs()) + 1e-30;
            let got = f64::from(c[i * n + j]);
            assert!(
                (got - want).abs() <= tol,
                "{} on {} {case:?}: C[{i}][{j}] = {got}, want {want} ± {tol}",
                kern.bf16_unit(),
                kern.backend()
            );
        }
    }
    c
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Runs each piece on this one CPU, last first, as if split.
struct Reversed(usize);

impl Executor for Reversed {
    fn threads(&self) -> usize {
        self.0
    }
    fn run(&self, pieces: usize, piece: &(dyn Fn(usize) + Sync)) {
        (0..pieces).rev().for_each(piece);
    }
}

const DIMS: [usize; 12] = [0, 1, 2, 3, 5, 7, 13, 16, 17, 33, 97, 130];

/// Random shapes from `DIMS`, every transpose, alpha and beta, with f32,
/// bf16 and mixed operands: each within the bound, and the three alike
/// bit for bit.
fn random_shapes(kern: Kernels) -> usize {
    let mut rng = Rng(7);
    let nan = Bf16::from_bits(0x7FC1);
    for trial in 0..24 {
        let mut pick = || DIMS[rng.below(DIMS.len())];
        let case = Case {
            m: pick(),
            n: pick(),
            k: pick(),
            trans_a: trial & 1 == 1,
            trans_b: trial & 2 == 2,
            alpha: [1.0, -0.5, 2.0][trial % 3],
            beta: [0.0, 1.0, 0.25, 0.0][trial % 4],
        };
        let f32s = run(
            kern,
            &Sequential,
            case,
            (|x| x, |x| x),
            (f32::NAN, f32::NAN),
        );
        let bf16s = run(
            kern,
            &Sequential,
            case,
            (Bf16::from_f32, Bf16::from_f32),
            (nan, nan),
        );
        let mixed = run(
            kern,
            &Sequential,
            case,
            (|x| x, Bf16::from_f32),
            (f32::NAN, nan),
        );
        assert!(
            bits(&f32s) == bits(&bf16s),
            "{case:?}: f32 and bf16 operands differ"
        );
        assert!(
            bits(&f32s) == bits(&mixed),
            "{case:?}: mixed operands differ"
        );
    }
    24 * 3
}

/// The tile path's edges: whole blocks, a padded last step of k, n not a
/// multiple of 32, m past a block edge, several blocks of rows and
/// columns, long k; split across pieces, bit for bit as one piece.
fn tile_edges(kern: Kernels) -> usize {
    let shapes = [
        (32, 32, 32),
        (33, 31, 33),
        (64, 65, 1),
        (95, 7, 100),
        (31, 40, 64),
        (200, 140, 70),
        (64, 33, 600),
    ];
    for (m, n, k) in shapes {
        for trans_a in [false, true] {
            let case = Case {
                m,
                n,
                k,
                trans_a,
                trans_b: trans_a,
                alpha: 0.75,
                beta: if trans_a { 0.5 } else { 0.0 },
            };
            let one = run(
                kern,
                &Sequential,
                case,
                (|x| x, |x| x),
                (f32::NAN, f32::NAN),
            );
            let split = run(
                kern,
                &Reversed(3),
                case,
                (|x| x, |x| x),
                (f32::NAN, f32::NAN),
            );
            assert!(bits(&one) == bits(&split), "{case:?}: the split changed C");
        }
    }
    shapes.len() * 4
}

/// B packed once multiplies bit for bit as `gemm_bf16` on the same
/// operands, whole and through views of its rows and leading columns.
fn packed_operand(kern: Kernels) -> usize {
    let (k, n) = (100, 70);
    let mut rng = Rng(11);
    let b_vals = rng.vec(k * n, -2.0, 2.0);
    let mut slots = vec![0; PackedBf16::len(k, n).unwrap()];
    kern.pack_bf16(MatRef::new(&b_vals, k, n).unwrap(), &mut slots)
        .unwrap();
    let packed = PackedBf16::new(&slots, k, n).unwrap();
    let views = [
        (0..100, 70),
        (32..100, 70),
        (64..100, 33),
        (0..100, 1),
        (0..64, 64),
    ];
    for (rows, cols) in views.clone() {
        let view = packed
            .row_range(rows.clone())
            .unwrap()
            .first_columns(cols)
            .unwrap();
        let part = MatRef::strided(&b_vals[rows.start * n..], rows.len(), cols, n).unwrap();
        for m in [5, 40, 97] {
            let a_vals = rng.vec(m * rows.len(), -2.0, 2.0);
            let a = MatRef::new(&a_vals, m, rows.len()).unwrap();
            let mut want = vec![f32::NAN; m * cols];
            let mut ws = vec![0.0; kern.gemm_bf16_workspace_len(m, cols, rows.len())];
            let c = MatMut::new(&mut want, m, cols).unwrap();
            kern.gemm_bf16(1.0, a, part, 0.0, c, &mut ws).unwrap();
            let mut got = vec![f32::NAN; m * cols];
            let mut ws = vec![0.0; kern.gemm_bf16_packed_workspace_len(m, cols, rows.len())];
            let c = MatMut::new(&mut got, m, cols).unwrap();
            kern.gemm_bf16_packed_with(&Reversed(2), 1.0, a, view, 0.0, c, &mut ws)
                .unwrap();
            assert!(
                bits(&got) == bits(&want),
                "packed rows {rows:?} cols {cols} m {m}"
            );
        }
    }
    views.len() * 3
}

#[no_mangle]
extern "C" fn rust_main(multiboot_info: u32) -> ! {
    install_exception_handlers();
    let refuse = command_line(multiboot_info)
        .split(' ')
        .any(|word| word == "refuse");
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
    let requests = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(tile_data_requests)) };
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
    handles.push(best.with_bf16_unit(Bf16Unit::Avx512Bf16).unwrap());
    handles.push(best);
    for kern in handles {
        check_unit(kern);
    }
    // The tiles add in another order than `vdpbf16ps`: if no last bit
    // differs from the pair unit's, the tile path did not run.
    let pairs = best.with_bf16_unit(Bf16Unit::Avx512Bf16).unwrap();
    let case = Case {
        m: 64,
        n: 64,
        k: 256,
        trans_a: false,
        trans_b: false,
        alpha: 1.0,
        beta: 0.0,
    };
    let on_pairs = run(
        pairs,
        &Sequential,
        case,
        (|x| x, |x| x),
        (f32::NAN, f32::NAN),
    );
    let on_tiles = run(
        best,
        &Sequential,
        case,
        (|x| x, |x| x),
        (f32::NAN, f32::NAN),
    );
    let differ = on_pairs
        .iter()
        .zip(&on_tiles)
        .filter(|(p, t)| p.to_bits() != t.to_bits())
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

/// Every check on one handle, and its peak loop.
fn check_unit(kern: Kernels) {
    let flops = kern.bf16_peak_loop(10);
    let checked = random_shapes(kern) + tile_edges(kern) + packed_operand(kern);
    say!(
        "amx-emulator: {} on {}: {checked} products within the bound; peak loop {flops} flop",
        kern.bf16_unit(),
        kern.backend()
    );
}
