//! A deterministic, platform-independent random number generator.
//!
//! The same seed must give bit-identical LoRA initialisations, random-criterion scores, masks and
//! data shuffles on every machine (the paper's comparisons are across seeds, Section 4), so we do
//! not depend on `rand`'s unstable-by-design stream. The state update is xoshiro256**, seeded
//! through SplitMix64, both from Vigna's reference implementations; all arithmetic is integer
//! except the final conversion to floats.

/// One step of SplitMix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    mix64(*state)
}

/// The SplitMix64 finaliser: a bijective 64-bit mixing function.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Converts the top 24 bits of `x` to a float uniform in `[0, 1)`, exactly representable in f32.
#[inline(always)]
fn to_unit_f32(x: u64) -> f32 {
    (x >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Stateless uniform in `[0, 1)` from `(seed, counter)`, for masks generated in parallel
/// (dropout) where a sequential stream would impose an order.
pub fn counter_uniform(seed: u64, counter: u64) -> f32 {
    counter_uniform_mixed(counter_seed(seed), counter)
}

/// The per-seed part of [`counter_uniform`], for loops that hoist it (the fused dropout kernels).
#[inline]
pub fn counter_seed(seed: u64) -> u64 {
    mix64(seed ^ 0x6A09_E667_F3BC_C909)
}

/// [`counter_uniform`] from a seed already passed through [`counter_seed`].
#[inline(always)]
pub fn counter_uniform_mixed(seed_mixed: u64, counter: u64) -> f32 {
    to_unit_f32(mix64(
        seed_mixed.wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
    ))
}

/// Stable 64-bit hash of a string (FNV-1a), for deriving per-tensor streams from names.
pub fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// xoshiro256** generator seeded through SplitMix64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
    seed: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng { s, seed }
    }

    /// The seed this generator was created from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// An independent generator derived from this one's seed and `stream`; it does not depend
    /// on how many numbers were already drawn, so forks are stable when code is reordered.
    pub fn fork(&self, stream: u64) -> Rng {
        Rng::new(mix64(
            self.seed ^ mix64(stream.wrapping_add(0xD1B5_4A32_D192_ED03)),
        ))
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform_f32(&mut self) -> f32 {
        to_unit_f32(self.next_u64())
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform integer in `0..n` (`n > 0`), by multiply-shift (bias below 2^-64·n).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal sample (Box–Muller, one sample per call, computed in f64).
    pub fn normal_f32(&mut self) -> f32 {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.uniform_f64();
        let u2 = self.uniform_f64();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// Fisher–Yates shuffle in place.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_vector() {
        // Reference outputs of SplitMix64 for seed 1234567 (Vigna's splitmix64.c).
        let mut s = 1234567u64;
        let got: Vec<u64> = (0..5).map(|_| splitmix64(&mut s)).collect();
        assert_eq!(
            got,
            [
                6457827717110365317,
                3203168211198807973,
                9817491932198370423,
                4593380528125082431,
                16408922859458223821
            ]
        );
    }

    #[test]
    fn rng_is_deterministic_and_seed_sensitive() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(43);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn rng_fixed_values() {
        // Pinned outputs: a change here changes every seeded init/mask/shuffle in the project.
        let mut r = Rng::new(0);
        let v: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(v, PINNED_U64);
        let mut r = Rng::new(7);
        let u: Vec<f32> = (0..3).map(|_| r.uniform_f32()).collect();
        assert_eq!(u, PINNED_UNIFORM);
        assert_eq!(counter_uniform(1, 2), PINNED_COUNTER);
    }
    // Cross-checked against an independent Python implementation of SplitMix64-seeded
    // xoshiro256** (same seeding as Rng::new) when pinned.
    const PINNED_U64: [u64; 3] = [
        11091344671253066420,
        13793997310169335082,
        1900383378846508768,
    ];
    #[allow(clippy::excessive_precision)] // exact f32 values, printed as f64
    const PINNED_UNIFORM: [f32; 3] = [0.7005764245986938, 0.2787511944770813, 0.8396274447441101];
    #[allow(clippy::excessive_precision)]
    const PINNED_COUNTER: f32 = 0.7329270839691162;

    #[test]
    fn uniform_and_normal_moments() {
        let mut r = Rng::new(3);
        let n = 200_000;
        let (mut s, mut s2, mut min, mut max) = (0f64, 0f64, 1f32, 0f32);
        for _ in 0..n {
            let u = r.uniform_f32();
            min = min.min(u);
            max = max.max(u);
            s += u as f64;
        }
        assert!(min >= 0.0 && max < 1.0);
        assert!((s / n as f64 - 0.5).abs() < 0.01);
        s = 0.0;
        for _ in 0..n {
            let x = r.normal_f32() as f64;
            assert!(x.is_finite());
            s += x;
            s2 += x * x;
        }
        assert!((s / n as f64).abs() < 0.01);
        assert!((s2 / n as f64 - 1.0).abs() < 0.02);
    }

    #[test]
    fn shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..100).collect();
        let mut b = a.clone();
        Rng::new(5).shuffle(&mut a);
        Rng::new(5).shuffle(&mut b);
        assert_eq!(a, b);
        assert_ne!(a, (0..100).collect::<Vec<_>>());
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn fork_streams_are_independent_and_stable() {
        let mut base = Rng::new(9);
        let f1 = base.fork(1);
        base.next_u64();
        assert_eq!(base.fork(1), f1, "fork must not depend on draws");
        assert_ne!(base.fork(2), f1);
        assert_ne!(Rng::new(10).fork(1), f1);
    }

    #[test]
    fn counter_uniform_in_range_and_varies() {
        let xs: Vec<f32> = (0..1000).map(|i| counter_uniform(11, i)).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        assert_ne!(counter_uniform(11, 0), counter_uniform(12, 0));
        let mean: f32 = xs.iter().sum::<f32>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.05);
    }
}
