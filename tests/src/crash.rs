//! What the crash and power-loss tests share: a seedable RNG, the seeds a run replays, and reading every
//! key's state back from the server.

use std::collections::HashMap;

use crate::Client;

/// splitmix64: tiny and seedable; the crash and power-loss tests pick their moments, keys and lengths
/// with it, so a seed replays a run's choices.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The seeds a crash test runs: `regressions` (seeds that once found a bug), then `KV_CRASH_SEED` if
/// set, else a fresh one, printed either way; only `KV_CRASH_SEED` when it is set.
pub fn crash_seeds(test: &str, regressions: &[u64]) -> Vec<u64> {
    let (seed, replay) = match std::env::var("KV_CRASH_SEED") {
        Ok(s) => (s.parse().unwrap_or_else(|_| panic!("KV_CRASH_SEED={s:?} is not a u64")), true),
        Err(_) => {
            (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64, false)
        }
    };
    eprintln!("{test}: seed {seed} (replay with KV_CRASH_SEED={seed})");
    if replay {
        return vec![seed];
    }
    regressions.iter().copied().chain([seed]).collect()
}

/// A key's state: absent (never written, or deleted), or its flags and value.
pub type KeyState = Option<(u32, Vec<u8>)>;

/// Every key's current state, read with multi-key gets of 100 keys; a key the server does not return is
/// absent. Strict about the reply: each line well formed, each value ending in `\r\n`, no key twice.
pub fn read_all<'a>(c: &mut Client, keys: impl IntoIterator<Item = &'a String>) -> HashMap<String, KeyState> {
    let keys: Vec<&String> = keys.into_iter().collect();
    let mut out = HashMap::new();
    for chunk in keys.chunks(100) {
        let names: Vec<&str> = chunk.iter().map(|k| k.as_str()).collect();
        c.send(format!("get {}\r\n", names.join(" ")).as_bytes());
        loop {
            let line = c.line();
            if line == "END\r\n" {
                break;
            }
            let parts: Vec<&str> = line.trim_end().split(' ').collect();
            assert!(parts.len() == 4 && parts[0] == "VALUE", "bad get reply line {line:?}");
            let len: usize = parts[3].parse().unwrap();
            let mut v = c.read_n(len + 2);
            assert_eq!(&v[len..], b"\r\n", "value terminator of {}", parts[1]);
            v.truncate(len);
            let prev = out.insert(parts[1].to_string(), Some((parts[2].parse().unwrap(), v)));
            assert!(prev.is_none(), "{} returned twice", parts[1]);
        }
    }
    for k in keys {
        out.entry(k.clone()).or_insert(None);
    }
    out
}

/// A key's state for a failure message (the value's first 40 bytes).
pub fn show(s: &KeyState) -> String {
    match s {
        None => "absent".into(),
        Some((f, v)) => format!("flags {f} {:?}", String::from_utf8_lossy(&v[..v.len().min(40)])),
    }
}
