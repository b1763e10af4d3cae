//! The ETC pool of Facebook's memcached workload study (Atikoglu et al., "Workload Analysis of a Large-Scale
//! Key-Value Store", SIGMETRICS 2012): key sizes, value sizes and the GET:SET mix, as fitted in the paper.

use crate::zipf::Rng;

/// Key sizes: generalized extreme value (location, scale, shape); mean ≈ 36.2 B.
pub const KEY_GEV: (f64, f64, f64) = (30.8, 8.2, 0.079);
/// Values of 0 to 14 bytes: (size, probability). Together 0.44 of all values.
pub const VALUE_TABLE: [(u32, f64); 15] = [
    (2, 0.178),
    (3, 0.092),
    (11, 0.090),
    (5, 0.027),
    (14, 0.020),
    (9, 0.008),
    (10, 0.008),
    (7, 0.006),
    (0, 0.005),
    (13, 0.003),
    (12, 0.001),
    (1, 0.0005),
    (6, 0.0005),
    (4, 0.0005),
    (8, 0.0005),
];
/// The other values: generalized Pareto (location, scale, shape); mean 15 + 214.5 / (1 - 0.348) ≈ 344 B.
pub const VALUE_GPD: (f64, f64, f64) = (15.0, 214.5, 0.348);
/// GET:SET = 30:1.
pub const GET_RATIO: f64 = 30.0 / 31.0;
/// Largest value: what memcached's default 1 MB item limit (`-I 1m`) stores under the longest key, by its own
/// `item_size_ok` arithmetic (48-byte header, key + NUL, CAS, `\r\n`; flags 0). The Pareto tail reaches it with
/// probability ~3e-10, so the cap only keeps a rare draw storable on memcached and kv-server alike.
pub const VALUE_MAX: u32 = (1 << 20) - kv_common::item_size(kv_common::MAX_KEY_LEN, 0, 0) as u32;

/// Key length in bytes: GEV by inversion, rounded, clamped to memcached's 1..=250.
pub fn key_len(rng: &mut Rng) -> u32 {
    let (mu, sigma, k) = KEY_GEV;
    // u in (0, 1): -ln(u) must be finite and positive.
    let u = rng.next_f64().max(f64::MIN_POSITIVE);
    let x = mu + sigma / k * ((-u.ln()).powf(-k) - 1.0);
    x.round().clamp(1.0, kv_common::MAX_KEY_LEN as f64) as u32
}

/// Value length in bytes: the discrete table 44% of the time, otherwise generalized Pareto by inversion (rounded,
/// at most [`VALUE_MAX`]).
pub fn value_len(rng: &mut Rng) -> u32 {
    let u = rng.next_f64();
    let mut acc = 0.0;
    for &(size, p) in &VALUE_TABLE {
        acc += p;
        if u < acc {
            return size;
        }
    }
    // Rescale the rest of [0, 1) to a fresh uniform for the tail.
    let v = (u - acc) / (1.0 - acc);
    let (theta, sigma, k) = VALUE_GPD;
    let x = theta + sigma / k * ((1.0 - v).powf(-k) - 1.0);
    x.round().min(VALUE_MAX as f64) as u32
}

/// Share of values drawn from the table (0.44).
pub fn table_share() -> f64 {
    VALUE_TABLE.iter().map(|&(_, p)| p).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 1_000_000;

    fn draws(f: fn(&mut Rng) -> u32, seed: u64) -> Vec<u32> {
        let mut rng = Rng::new(seed);
        (0..N).map(|_| f(&mut rng)).collect()
    }

    fn mean(v: &[u32]) -> f64 {
        v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64
    }

    fn share(v: &[u32], pred: impl Fn(u32) -> bool) -> f64 {
        v.iter().filter(|&&x| pred(x)).count() as f64 / v.len() as f64
    }

    #[test]
    fn key_sizes_follow_the_gev_fit() {
        let v = draws(key_len, 3);
        // Mean μ + σ(Γ(1-k) - 1)/k = 36.22; rounding moves it by well under 0.1.
        let m = mean(&v);
        assert!((m - 36.22).abs() < 0.15, "mean {m}");
        let mut s = v.clone();
        s.sort_unstable();
        // Median μ + σ/k((ln 2)^-k - 1) = 33.85.
        assert!((33..=34).contains(&s[N / 2]), "median {}", s[N / 2]);
        assert!(v.iter().all(|&x| (1..=250).contains(&x)));
        // CDF at 40.5 (the share of keys of at most 40 bytes): exp(-(1 + k(x-μ)/σ)^(-1/k)).
        let (mu, sigma, k) = KEY_GEV;
        let cdf = (-(1.0 + k * (40.5 - mu) / sigma).powf(-1.0 / k)).exp();
        let got = share(&v, |x| x <= 40);
        assert!((got - cdf).abs() < 0.003, "P(key <= 40) {got} vs {cdf}");
    }

    #[test]
    fn value_sizes_follow_the_table_and_the_pareto_fit() {
        assert!((table_share() - 0.44).abs() < 1e-9);
        let v = draws(value_len, 5);
        // The table: sizes 0..=14, 44% together, each with its own probability.
        let small = share(&v, |x| x <= 14);
        assert!((small - 0.44).abs() < 0.003, "small share {small}");
        for &(size, p) in &VALUE_TABLE {
            let got = share(&v, |x| x == size);
            // The Pareto part starts at 15, so sizes below it come from the table alone.
            assert!((got - p).abs() < 4.0 * (p / N as f64).sqrt() + 2e-4, "P({size}) {got} vs {p}");
        }
        // The Pareto part: median θ + σ/k(2^k - 1) = 183.1, mean θ + σ/(1 - k) = 344.0.
        let mut tail: Vec<u32> = v.iter().copied().filter(|&x| x >= 15).collect();
        let tm = mean(&tail);
        assert!((tm - 344.0).abs() < 344.0 * 0.03, "tail mean {tm}");
        tail.sort_unstable();
        let med = tail[tail.len() / 2];
        assert!((180..=186).contains(&med), "tail median {med}");
        // Overall mean: 0.44 × 5.21 (the table's) + 0.56 × 344 ≈ 194.9.
        let m = mean(&v);
        assert!((m - 194.9).abs() < 194.9 * 0.03, "mean {m}");
        assert!(v.iter().all(|&x| x <= VALUE_MAX));
    }

    #[test]
    fn value_max_fits_memcacheds_item_limit_with_the_longest_key() {
        assert_eq!(VALUE_MAX, 1_048_576 - 59 - 250);
        assert_eq!(kv_common::item_size(250, 0, VALUE_MAX as usize), 1 << 20);
    }

    #[test]
    fn samplers_are_deterministic_per_seed() {
        assert_eq!(draws(key_len, 9)[..1000], draws(key_len, 9)[..1000]);
        assert_eq!(draws(value_len, 9)[..1000], draws(value_len, 9)[..1000]);
        assert_ne!(draws(value_len, 9)[..1000], draws(value_len, 10)[..1000]);
    }
}
