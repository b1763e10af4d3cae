//! Key popularity: a Zipf sampler over ranks `0..n` (rank 0 the most popular) and a small fast RNG.

/// xoshiro256** seeded through splitmix64: fast, deterministic for a given seed, good enough for load generation.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng { s: [next(), next(), next(), next()] }
    }

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

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf(s) over ranks `0..n`: P(rank k) is proportional to 1 / (k + 1)^s. `s == 0` is uniform.
///
/// Sampling inverts a precomputed cumulative table (8 bytes per key, shared read-only between threads), so it is
/// exact for any `s >= 0`.
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, s: f64) -> Self {
        assert!(n > 0, "zipf over zero keys");
        assert!(s >= 0.0 && s.is_finite(), "zipf exponent must be >= 0");
        let mut cdf = Vec::with_capacity(n as usize);
        let mut acc = 0.0f64;
        for k in 0..n {
            acc += if s == 0.0 { 1.0 } else { ((k + 1) as f64).powf(-s) };
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        // Guard against rounding: the last entry must catch every u < 1.
        if let Some(last) = cdf.last_mut() {
            *last = 1.0;
        }
        Zipf { cdf }
    }

    pub fn n(&self) -> u64 {
        self.cdf.len() as u64
    }

    /// Probability of `rank` (for tests and reports).
    pub fn pmf(&self, rank: u64) -> f64 {
        let r = rank as usize;
        if r == 0 {
            self.cdf[0]
        } else {
            self.cdf[r] - self.cdf[r - 1]
        }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let i = self.cdf.partition_point(|&c| c <= u);
        i.min(self.cdf.len() - 1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(z: &Zipf, draws: usize, seed: u64) -> Vec<u64> {
        let mut rng = Rng::new(seed);
        let mut h = vec![0u64; z.n() as usize];
        for _ in 0..draws {
            h[z.sample(&mut rng) as usize] += 1;
        }
        h
    }

    #[test]
    fn rank0_is_most_frequent_and_matches_pmf() {
        let z = Zipf::new(1000, 0.99);
        let draws = 400_000;
        let h = histogram(&z, draws, 7);
        let max_rank = h.iter().enumerate().max_by_key(|(_, c)| **c).unwrap().0;
        assert_eq!(max_rank, 0);
        // Frequencies decrease with rank (in expectation): compare well-separated ranks.
        assert!(h[0] > h[1] && h[1] > h[9] && h[9] > h[99] && h[99] > h[999]);
        for rank in [0u64, 1, 2, 10, 100] {
            let expected = z.pmf(rank) * draws as f64;
            let got = h[rank as usize] as f64;
            let sd = expected.sqrt();
            assert!((got - expected).abs() < 5.0 * sd + 5.0, "rank {rank}: got {got}, expected {expected}");
        }
        // Ratio of rank 0 to rank 1 is about 2^0.99.
        let ratio = h[0] as f64 / h[1] as f64;
        assert!((ratio - 2f64.powf(0.99)).abs() < 0.1, "ratio {ratio}");
    }

    #[test]
    fn s0_is_roughly_uniform() {
        let n = 100u64;
        let z = Zipf::new(n, 0.0);
        let draws = 200_000;
        let h = histogram(&z, draws, 11);
        let expected = draws as f64 / n as f64;
        for (rank, &c) in h.iter().enumerate() {
            assert!((c as f64 - expected).abs() < 6.0 * expected.sqrt(), "rank {rank}: {c} vs {expected}");
        }
    }

    #[test]
    fn samples_stay_in_range_and_single_key_works() {
        let z = Zipf::new(1, 1.2);
        let mut rng = Rng::new(1);
        for _ in 0..1000 {
            assert_eq!(z.sample(&mut rng), 0);
        }
        let z = Zipf::new(10, 2.0);
        for _ in 0..10_000 {
            assert!(z.sample(&mut rng) < 10);
        }
    }

    #[test]
    fn rng_is_deterministic_and_f64_in_unit_interval() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
