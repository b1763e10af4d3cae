//! The key space: the key text and the value size of every key index `0..n`.
//!
//! The fixed workload's keys are `key:<i>` with one value size for all. The ETC workload gives each index its own
//! key length and value size, drawn from a generator seeded by `(seed, i)` alone, so the preload, every load thread
//! and every later run with the same seed agree on them: a set during the run rewrites the key the preload stored,
//! with the same size.

use std::io::Write as _;

use crate::etc;
use crate::zipf::{Rng, Zipf};

/// Key bytes: memcached allows any byte but whitespace and control characters; these 64 need no escaping anywhere.
const ALPHABET: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_";

#[derive(Clone, Debug)]
pub enum KeySpace {
    /// `key:<i>`, every value `value_size` bytes.
    Fixed { n: u64, value_size: u32 },
    /// ETC sizes: key `i` is `text[off[i]..off[i + 1]]`, its value `value_len[i]` bytes.
    Etc { text: Vec<u8>, off: Vec<u64>, value_len: Vec<u32> },
}

/// Sizes of a key space: plain means over the keys, and means over requests (each key weighted by its popularity).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sizes {
    pub key_mean: f64,
    pub value_mean: f64,
    pub value_max: u32,
    pub req_key_mean: f64,
    pub req_value_mean: f64,
}

impl KeySpace {
    pub fn fixed(n: u64, value_size: u32) -> Self {
        KeySpace::Fixed { n, value_size }
    }

    /// ETC key and value sizes for `n` keys under `seed`.
    ///
    /// Key `i` starts with `i` in base 64, written in as many digits as `n - 1` needs, which makes keys of one length
    /// distinct; the rest of its length is filler from its generator. A sampled length shorter than those digits
    /// (at 10,000 keys: under 3 bytes, probability ~1e-16) is raised to fit them.
    pub fn etc(n: u64, seed: u64) -> Self {
        let digits = base64_digits(n.saturating_sub(1));
        let mut text = Vec::with_capacity(n as usize * 37);
        let mut off = Vec::with_capacity(n as usize + 1);
        let mut value_len = Vec::with_capacity(n as usize);
        off.push(0);
        for i in 0..n {
            let mut rng = key_rng(seed, i);
            let len = (etc::key_len(&mut rng) as usize).max(digits);
            value_len.push(etc::value_len(&mut rng));
            for d in (0..digits).rev() {
                text.push(ALPHABET[((i >> (6 * d)) & 63) as usize]);
            }
            for _ in digits..len {
                text.push(ALPHABET[(rng.next_u64() >> 58) as usize]);
            }
            off.push(text.len() as u64);
        }
        KeySpace::Etc { text, off, value_len }
    }

    pub fn n(&self) -> u64 {
        match self {
            KeySpace::Fixed { n, .. } => *n,
            KeySpace::Etc { value_len, .. } => value_len.len() as u64,
        }
    }

    pub fn write_key(&self, out: &mut Vec<u8>, i: u64) {
        match self {
            KeySpace::Fixed { .. } => {
                out.extend_from_slice(b"key:");
                write!(out, "{i}").expect("write to Vec");
            }
            KeySpace::Etc { text, off, .. } => {
                out.extend_from_slice(&text[off[i as usize] as usize..off[i as usize + 1] as usize])
            }
        }
    }

    pub fn key_len(&self, i: u64) -> usize {
        match self {
            KeySpace::Fixed { .. } => 4 + decimal_digits(i),
            KeySpace::Etc { off, .. } => (off[i as usize + 1] - off[i as usize]) as usize,
        }
    }

    pub fn value_len(&self, i: u64) -> usize {
        match self {
            KeySpace::Fixed { value_size, .. } => *value_size as usize,
            KeySpace::Etc { value_len, .. } => value_len[i as usize] as usize,
        }
    }

    pub fn max_key_len(&self) -> usize {
        match self {
            KeySpace::Fixed { n, .. } => 4 + decimal_digits(n.saturating_sub(1)),
            KeySpace::Etc { off, .. } => off.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0),
        }
    }

    pub fn max_value_len(&self) -> usize {
        match self {
            KeySpace::Fixed { value_size, .. } => *value_size as usize,
            KeySpace::Etc { value_len, .. } => value_len.iter().copied().max().unwrap_or(0) as usize,
        }
    }

    /// Mean sizes over keys, and over requests drawn with `zipf`'s popularity.
    pub fn sizes(&self, zipf: &Zipf) -> Sizes {
        let n = self.n();
        let (mut k, mut v, mut rk, mut rv) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..n {
            let (kl, vl, p) = (self.key_len(i) as f64, self.value_len(i) as f64, zipf.pmf(i));
            k += kl;
            v += vl;
            rk += p * kl;
            rv += p * vl;
        }
        let nf = n.max(1) as f64;
        Sizes {
            key_mean: k / nf,
            value_mean: v / nf,
            value_max: self.max_value_len() as u32,
            req_key_mean: rk,
            req_value_mean: rv,
        }
    }
}

/// The generator of key `i`'s sizes and filler: a function of `(seed, i)` only.
fn key_rng(seed: u64, i: u64) -> Rng {
    Rng::new(seed.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn base64_digits(mut x: u64) -> usize {
    let mut d = 1;
    while x >= 64 {
        x >>= 6;
        d += 1;
    }
    d
}

fn decimal_digits(x: u64) -> usize {
    x.checked_ilog10().map_or(1, |l| l as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn key(ks: &KeySpace, i: u64) -> Vec<u8> {
        let mut v = Vec::new();
        ks.write_key(&mut v, i);
        v
    }

    #[test]
    fn fixed_keys_are_the_classic_ones() {
        let ks = KeySpace::fixed(10_000, 32);
        assert_eq!(key(&ks, 0), b"key:0");
        assert_eq!(key(&ks, 9999), b"key:9999");
        assert_eq!((ks.key_len(0), ks.key_len(10), ks.key_len(9999)), (5, 6, 8));
        assert_eq!((ks.max_key_len(), ks.value_len(7), ks.max_value_len()), (8, 32, 32));
    }

    #[test]
    fn etc_keys_are_valid_unique_and_deterministic() {
        let n = 20_000;
        let a = KeySpace::etc(n, 1);
        let b = KeySpace::etc(n, 1);
        let c = KeySpace::etc(n, 2);
        let mut seen = HashSet::new();
        for i in 0..n {
            let k = key(&a, i);
            assert_eq!(k.len(), a.key_len(i));
            assert!((3..=250).contains(&k.len()), "key {i}: {} bytes", k.len());
            assert!(k.iter().all(|&b| b.is_ascii_graphic()), "key {i}: {k:?}");
            assert!(seen.insert(k.clone()), "duplicate key {k:?}");
            assert_eq!(k, key(&b, i));
            assert_eq!(a.value_len(i), b.value_len(i));
        }
        // Another seed draws other sizes.
        assert!((0..n).filter(|&i| a.value_len(i) != c.value_len(i)).count() > n as usize / 2);
        // A key's sizes depend on (seed, i) only, not on how many keys there are.
        let small = KeySpace::etc(100, 1);
        for i in 0..100 {
            assert_eq!(small.value_len(i), a.value_len(i));
            assert_eq!(small.key_len(i).max(3), a.key_len(i));
        }
    }

    #[test]
    fn etc_sizes_match_the_fits_over_keys() {
        let ks = KeySpace::etc(200_000, 1);
        let s = ks.sizes(&Zipf::new(200_000, 0.0));
        assert!((s.key_mean - 36.2).abs() < 0.3, "{s:?}");
        assert!((s.value_mean - 194.9).abs() < 194.9 * 0.05, "{s:?}");
        // Uniform popularity: the request means are the key means.
        assert!((s.req_key_mean - s.key_mean).abs() < 1e-6 && (s.req_value_mean - s.value_mean).abs() < 1e-6);
        let f = KeySpace::fixed(10, 32).sizes(&Zipf::new(10, 0.0));
        assert_eq!((f.key_mean, f.value_mean, f.value_max), (5.0, 32.0, 32));
    }

    #[test]
    fn digit_counts() {
        assert_eq!((base64_digits(0), base64_digits(63), base64_digits(64), base64_digits(9999)), (1, 1, 2, 3));
        assert_eq!((decimal_digits(0), decimal_digits(9), decimal_digits(10), decimal_digits(9999)), (1, 1, 2, 4));
    }
}
