//! Process-wide settings for CPU training: denormal handling, the compute threads, the allocator
//! and candle's elementwise thread pool.
//!
//! **Denormals.** Real padded batches produce subnormal floats (Adam's second moment of a
//! parameter whose gradient is ~0 decays through the subnormal range; products of tiny attention
//! probabilities and GELU tails land there), and on x86 every subnormal operand or result costs a
//! microcode assist of ~100 cycles: `train` on MRPC ran 12× slower than with flush-to-zero.
//! [`init_process`] sets FTZ and DAZ (MXCSR bits 15 and 6) on the calling thread and on every
//! rayon worker (gemm and our fused ops run there): subnormal results become 0 and subnormal
//! inputs read as 0, as PyTorch does on CPU with `torch.set_flush_denormal(True)`. The values
//! concerned are below 1.2e-38, far under anything a loss can see.
//!
//! **Allocator.**
//! A training step allocates and frees the same few hundred large buffers (activations,
//! gradients: 0.1–13 MB each) every step. glibc serves blocks above its mmap threshold with fresh
//! `mmap`s and returns them with `munmap`, and trims the heap top back to the OS, so every step
//! page-faults its whole working set in again: about 20% of a MiniLM PET step in `perf` (page
//! faults, zeroing, TLB shootdowns). Raising the mmap threshold to glibc's maximum (32 MiB on
//! 64-bit, above our largest buffer) and the trim threshold keeps freed blocks in the heap for the
//! next step. Peak RSS is unchanged (it is the step's high-water mark either way); the process
//! simply does not give that memory back between steps.
//!
//! **candle's elementwise pool.** candle 0.11 runs large elementwise ops (adds, the gradient
//! accumulations of every backward edge) on its own spin-barrier pool, next to rayon's pool that
//! runs gemm and our fused ops: four busy threads on two cores. The caller spins until the pool's
//! worker finishes its share; when that worker is descheduled (by rayon's workers, or any other
//! process) the spin burns the core: 24% of a step in `perf`, and steps 1.5–2× slower whenever
//! the machine has other work. With the heavy elementwise work moved into the fused ops (rayon),
//! what candle still runs elementwise is cheap enough for one thread, so we set
//! `CANDLE_NUM_THREADS=1` unless the user chose a value. This must happen before candle's first
//! large elementwise op (the pool is created then), and before other threads exist (`set_var` is
//! unsound once they do): [`init_process`], at the start of the binary's `main`. Library callers
//! (tests) keep candle's default pool; the model builder only sets FTZ/DAZ.

use std::sync::Once;

const MXCSR_DAZ: u32 = 1 << 6;
const MXCSR_FTZ: u32 = 1 << 15;

/// Sets flush-to-zero and denormals-are-zero on the calling thread (no-op off x86-64).
pub fn set_flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= MXCSR_FTZ | MXCSR_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}

/// Whether the calling thread flushes denormals (FTZ and DAZ both set; `true` off x86-64, where
/// there is nothing to set).
pub fn flush_denormals_on() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        csr & (MXCSR_FTZ | MXCSR_DAZ) == (MXCSR_FTZ | MXCSR_DAZ)
    }
    #[cfg(not(target_arch = "x86_64"))]
    true
}

/// Most compute threads `--threads` accepts, as a multiple of the available cores: more only
/// oversubscribes, and a typo such as 100000 would spawn that many threads.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// The process set-up of a training binary, called at the start of `main` before any other
/// thread exists: candle's elementwise pool off (`CANDLE_NUM_THREADS=1` unless set), rayon's
/// global pool with `threads` workers (default: all cores) that flush denormals, FTZ/DAZ on the
/// calling thread, and the allocator thresholds. Returns the number of compute threads.
pub fn init_process(threads: Option<usize>) -> Result<usize, String> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if let Some(n) = threads {
        if n == 0 || n > MAX_THREADS_PER_CORE * cores {
            return Err(format!(
                "--threads {n}: expected 1 to {} ({cores} cores here)",
                MAX_THREADS_PER_CORE * cores
            ));
        }
        // gemm and candle read the thread count from here (candle_core::utils::get_num_threads).
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    let n = threads.unwrap_or_else(candle_core::utils::get_num_threads);
    ensure_compute_threads(Some(n));
    tune_allocator();
    Ok(n)
}

/// FTZ/DAZ on the calling thread and on every rayon worker: builds the global pool with a start
/// handler that sets them, or, when the pool already exists (a library caller, a test harness),
/// sets them on each of its threads. Idempotent; what [`init_process`] and the model builder call.
pub fn ensure_compute_threads(threads: Option<usize>) {
    set_flush_denormals();
    static POOL: Once = Once::new();
    POOL.call_once(|| {
        let mut b = rayon::ThreadPoolBuilder::new().start_handler(|_| set_flush_denormals());
        if let Some(n) = threads {
            b = b.num_threads(n);
        }
        if b.build_global().is_err() {
            rayon::broadcast(|_| set_flush_denormals());
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Raises glibc's mmap and trim thresholds once per process. `PETNAS_NO_MALLOPT` keeps glibc's
/// defaults.
fn tune_allocator() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("PETNAS_NO_MALLOPT").is_some() {
            return;
        }
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        unsafe {
            const M_TRIM_THRESHOLD: i32 = -1;
            const M_MMAP_THRESHOLD: i32 = -3;
            // Return values ignored: a refused setting leaves glibc's defaults, which are correct,
            // only slower.
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    });
}
