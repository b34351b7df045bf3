//! Process-wide settings for CPU training: the allocator and candle's elementwise thread pool.
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
//! large elementwise op (the pool is created then); the binary should rather set it at start-up,
//! next to `RAYON_NUM_THREADS`, and this is the fallback for library callers.

use std::sync::Once;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    fn mallopt(param: i32, value: i32) -> i32;
}

/// Applies the settings once per process. `PETNAS_NO_MALLOPT` keeps glibc's allocator defaults;
/// an explicit `CANDLE_NUM_THREADS` is respected.
pub fn tune_for_training() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
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
