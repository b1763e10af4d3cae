//! Differential fuzzing of the XDP program (through BPF_PROG_TEST_RUN) against the user-space server.
//!
//! Valid `get`/`gets` requests (and binary `get`/`getk` ones) for a pool of keys, mutated at the text level (bit flips, inserted and
//! deleted bytes, truncation, whitespace and control bytes, case, several commands, oversize) and at the
//! header level (IP/UDP lengths, frame header, IP options, fragments, other protocols, ports, ethertypes
//! and sources, Ethernet padding, truncated frames, random bytes), with writes through the store
//! interleaved (sets with short and past expiry times, deletes, touches, incr, flush_all), so the kernel
//! cache is kept by the real `KernelSync` (insert/replace/remove/flush) while the packets run.
//!
//! A packet the network stack would deliver is first answered by the user-space pipeline, as the UDP
//! server would (that read also admits keys into the kernel cache, as in production). Then:
//! - XDP_TX: the reply headers must be right and the text equal to that user-space reply, and the stack
//!   must have delivered the packet at all;
//! - XDP_PASS: the packet must be untouched;
//! - anything else is a mismatch.
//!
//! The user-space reply is taken before the XDP run: time only moves forward, and the kernel stops
//! serving an item before the store expires it, so an item XDP served was also alive for user space.
//!
//! `KV_FUZZ_SEED` replays a run (the seed is printed); `KV_FUZZ_PACKETS` overrides the count.

use std::sync::Arc;

use clap::Parser as _;
use kv_common::xdp_action::{XDP_PASS, XDP_TX};
use kv_common::{CACHE_ENTRY_BUF, COUNTERS};

use super::{ip_checksum, load_with, packet, run, try_reply_text};
use crate::config::Config;
use crate::exec::Ctx;
use crate::kernel::{KernelPath, KernelSync};
use crate::record::NoJournal;
use crate::stats::Stats;
use crate::store::{Store, StoreOptions};

const PORT: u16 = 11211;

mod reference;
use reference::{delivered, udp_reference};

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Recomputes the IPv4 header checksum (when there is an IPv4 header), so that most packets get past
/// the checksum check and exercise what follows; the generator leaves some wrong on purpose.
fn fix_checksum(pkt: &mut [u8]) {
    if pkt.len() < 34 || pkt[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = ((pkt[14] & 15) as usize * 4).max(20);
    if pkt.len() < 14 + ihl {
        return;
    }
    pkt[24..26].copy_from_slice(&[0, 0]);
    let sum = ip_checksum(&pkt[14..14 + ihl]);
    pkt[24..26].copy_from_slice(&sum.to_be_bytes());
}

struct Fuzz {
    rng: Rng,
    ctx: Ctx,
    keys: Vec<Vec<u8>>,
    writes: u64,
}

impl Fuzz {
    fn key(&mut self) -> Vec<u8> {
        if self.rng.chance(16) {
            // A key nobody wrote: a miss, or a slot shared with another key.
            let n = 1 + self.rng.upto(20);
            return (0..n).map(|_| 0x21 + self.rng.below(0x5e) as u8).collect();
        }
        self.keys[self.rng.below(self.keys.len() as u64) as usize].clone()
    }

    fn value(&mut self) -> Vec<u8> {
        let n = match self.rng.below(12) {
            0 => CACHE_ENTRY_BUF - 300 + self.rng.upto(400), // around what fits a kernel slot
            1 => 0,
            2 => 200 + self.rng.upto(600),
            _ => self.rng.upto(60),
        };
        // Binary values, \r\n inside included.
        self.rng.bytes(n)
    }

    /// One write through the store (and so through `KernelSync` to the kernel cache).
    fn write(&mut self) {
        let k = self.key();
        let exptime: i64 = match self.rng.below(10) {
            0 => -1,                               // dead on arrival
            1 | 2 => 1 + self.rng.below(2) as i64, // expires during the run
            3 => 3600,
            _ => 0,
        };
        let req: Vec<u8> = match self.rng.below(40) {
            0..=24 => {
                let v = self.value();
                let flags = if self.rng.chance(4) { u32::MAX } else { self.rng.below(70000) as u32 };
                let cmd: &[u8] = match self.rng.below(8) {
                    0 => b"add",
                    1 => b"replace",
                    2 => b"append",
                    3 => b"prepend",
                    _ => b"set",
                };
                [cmd, b" ", &k, format!(" {flags} {exptime} {}\r\n", v.len()).as_bytes(), &v, b"\r\n"].concat()
            }
            25..=29 => [b"delete ", &k[..], b"\r\n"].concat(),
            30..=32 => [b"touch ", &k[..], format!(" {exptime}\r\n").as_bytes()].concat(),
            33..=35 => [b"set ", &k[..], b" 0 0 2\r\n41\r\nincr ", &k[..], b" 1\r\n"].concat(),
            36 => [b"gat ", format!("{exptime} ").as_bytes(), &k[..], b"\r\n"].concat(),
            37 if self.rng.chance(30) => b"flush_all\r\n".to_vec(),
            // Delayed: flushes the kernel at once and stops admissions until the deadline (a second or two).
            38 if self.rng.chance(20_000) => b"flush_all 1\r\n".to_vec(),
            _ => [b"set ", &k[..], b" 1 0 3\r\nnew\r\n"].concat(),
        };
        let reply = udp_reference(&self.ctx, &req);
        assert!(!reply.is_empty(), "no reply to write {:?}", String::from_utf8_lossy(&req));
        self.writes += 1;
    }

    /// A `get`/`gets` request with 1 to 24 keys, mostly from the pool; or a binary one.
    fn request(&mut self) -> Vec<u8> {
        if self.rng.chance(5) {
            return self.binary_request();
        }
        let cmd: &[u8] = if self.rng.chance(3) { b"gets" } else { b"get" };
        let n = match self.rng.below(10) {
            0..=5 => 1,
            6 | 7 => 2 + self.rng.upto(2),
            8 => 1 + self.rng.upto(11),
            _ => 12 + self.rng.upto(12),
        };
        let mut t = cmd.to_vec();
        for _ in 0..n {
            t.push(b' ');
            let k = self.key();
            t.extend_from_slice(&k);
        }
        t.extend_from_slice(b"\r\n");
        t
    }

    /// A binary `get`/`getk` for a key, mostly from the pool (other opcodes now and then; data type,
    /// vbucket and CAS set sometimes); the text mutations apply to it as to text.
    fn binary_request(&mut self) -> Vec<u8> {
        let opcode = match self.rng.below(12) {
            0 => self.rng.next() as u8,
            1 => [0x09, 0x0d, 0x0a, 0x01, 0x1d][self.rng.below(5) as usize],
            2..=5 => kv_common::BIN_OP_GETK,
            _ => kv_common::BIN_OP_GET,
        };
        let k = self.key();
        let mut t = super::binary::bin_request(opcode, &k, b"", b"", self.rng.next() as u32);
        if self.rng.chance(4) {
            t[5] = self.rng.next() as u8;
            let b = self.rng.bytes(10);
            t[6..8].copy_from_slice(&b[..2]);
            t[16..24].copy_from_slice(&b[2..]);
        }
        t
    }

    /// Bytes the parsers treat specially.
    fn nasty(&mut self) -> u8 {
        const N: &[u8] = b" \t\r\n\0\x7f\x80\xff\x0b\x0c\x01 gGeEtTsS";
        if self.rng.chance(4) {
            self.rng.next() as u8
        } else {
            N[self.rng.below(N.len() as u64) as usize]
        }
    }

    fn mutate_text(&mut self, mut t: Vec<u8>) -> Vec<u8> {
        match self.rng.below(26) {
            0..=11 => {}
            12 => {
                for _ in 0..1 + self.rng.upto(3) {
                    if !t.is_empty() {
                        let i = self.rng.below(t.len() as u64) as usize;
                        t[i] ^= 1 << self.rng.below(8);
                    }
                }
            }
            13 => {
                for _ in 0..1 + self.rng.upto(3) {
                    let i = self.rng.upto(t.len());
                    let b = self.nasty();
                    t.insert(i, b);
                }
            }
            14 => {
                for _ in 0..1 + self.rng.upto(3) {
                    if !t.is_empty() {
                        let i = self.rng.below(t.len() as u64) as usize;
                        t.remove(i);
                    }
                }
            }
            15 => t.truncate(self.rng.upto(t.len())),
            16 => {
                // Whitespace: every separator, or one, doubled or replaced by a tab; leading or trailing.
                let spaces: Vec<usize> = t.iter().enumerate().filter(|(_, b)| **b == b' ').map(|(i, _)| i).collect();
                match self.rng.below(6) {
                    0 if !spaces.is_empty() => {
                        let i = spaces[self.rng.below(spaces.len() as u64) as usize];
                        t.insert(i, b' ');
                    }
                    1 if !spaces.is_empty() => {
                        let i = spaces[self.rng.below(spaces.len() as u64) as usize];
                        t[i] = b'\t';
                    }
                    2 => {
                        let end = t.len().saturating_sub(2);
                        t.insert(end, b' ');
                    }
                    3 => t.insert(0, b' '),
                    4 if t.ends_with(b"\r\n") => {
                        let n = t.len();
                        t.remove(n - 2); // bare \n
                    }
                    _ => {
                        t.pop(); // \r without \n
                    }
                }
            }
            17 => {
                let prefix: &[u8] = match self.rng.below(8) {
                    0 => b"GET",
                    1 => b"Gets",
                    2 => b"gat 0",
                    3 => b"gats 100",
                    4 => b"get\r\n",
                    5 => b"get \r\n",
                    6 => b"mg",
                    _ => b"touch",
                };
                let rest = t.iter().position(|b| *b == b' ').map_or(&t[..0], |i| &t[i..]).to_vec();
                t = [prefix, &rest[..]].concat();
            }
            18 => {
                let more = self.request();
                t.extend_from_slice(&more); // two commands in one datagram
            }
            19 => {
                // Oversize: a key over 250 bytes, or enough keys to pass what the program reads.
                if self.rng.chance(2) {
                    let n = 251 + self.rng.upto(300);
                    t = [&b"get "[..], &vec![b'k'; n], b"\r\n"].concat();
                } else {
                    t.truncate(t.len() - 2);
                    while t.len() < kv_common::XDP_REQ_MAX + 8 {
                        let k = self.key();
                        t.push(b' ');
                        t.extend_from_slice(&k);
                    }
                    t.extend_from_slice(b"\r\n");
                }
            }
            20 => {
                let n = self.rng.upto(700);
                t = self.rng.bytes(n);
            }
            21 => {
                // Printable noise that ends like a request.
                let n = self.rng.upto(80);
                t = (0..n).map(|_| 0x20 + self.rng.below(0x5f) as u8).collect();
                t.extend_from_slice(b"\r\n");
            }
            22 => {
                // A key right at 250 bytes, or a byte over.
                let n = 249 + self.rng.upto(2);
                let fill = 0x21 + self.rng.below(0x5e) as u8;
                t = [&b"get "[..], &vec![fill; n], b"\r\n"].concat();
            }
            23 => {
                // noreply or extra arguments after the keys.
                let end = t.len().saturating_sub(2);
                t.splice(end..end, b" noreply".iter().copied());
            }
            _ => {
                // A byte inside a key replaced by a control or high byte.
                if t.len() > 6 {
                    let i = 4 + self.rng.below(t.len() as u64 - 6) as usize;
                    t[i] = self.nasty();
                }
            }
        }
        t
    }

    /// Mutations of an IPv6 frame's headers; the UDP checksum is recomputed afterwards unless the
    /// mutation was to drop it, so that most frames reach the text.
    fn mutate_frame6(&mut self, mut p: Vec<u8>) -> Vec<u8> {
        let r = &mut self.rng;
        let mut keep_check = false;
        match r.below(24) {
            0..=12 => {}
            13 => {
                let v = if r.chance(2) { r.below(65536) } else { (p.len() as u64 - 54).wrapping_add(r.below(9)) - 4 };
                p[18..20].copy_from_slice(&(v as u16).to_be_bytes());
            }
            14 => {
                let v = if r.chance(2) { r.below(65536) } else { (p.len() as u64 - 54).wrapping_add(r.below(9)) - 4 };
                p[58..60].copy_from_slice(&(v as u16).to_be_bytes());
            }
            // Extension headers and other protocols.
            15 => p[20] = [0, 43, 44, 60, 58, 6, r.next() as u8][r.below(7) as usize],
            16 => p[14] = (p[14] & 0x0f) | ((r.below(16) as u8) << 4),
            17 => p[22 + r.below(16) as usize] ^= 1 << r.below(8),
            18 => {
                let port = [11212, 0, 53, r.next() as u16][r.below(4) as usize];
                p[56..58].copy_from_slice(&port.to_be_bytes());
            }
            19 => {
                p[60..62].copy_from_slice(&[0, 0]);
                keep_check = true;
            }
            20 => {
                let i = 64 + r.below(6) as usize;
                p[i] = if r.chance(2) { r.next() as u8 } else { p[i] ^ 1 };
            }
            21 => {
                let n = 14 + r.upto(p.len() - 14);
                p.truncate(n);
            }
            22 => p.extend_from_slice(&[0; 6]), // Ethernet padding
            _ => {
                let i = r.below(p.len() as u64) as usize;
                p[i] = r.next() as u8;
            }
        }
        if !keep_check && p.len() >= 62 {
            p[60..62].copy_from_slice(&[0, 0]);
            let c = super::ipv6::udp6_checksum(&p);
            p[60..62].copy_from_slice(&c.to_be_bytes());
        }
        p
    }

    fn mutate_frame(&mut self, mut p: Vec<u8>) -> Vec<u8> {
        let r = &mut self.rng;
        match r.below(32) {
            0..=16 => {}
            17 => {
                let v = if r.chance(2) { r.below(65536) } else { (p.len() as u64 - 14).wrapping_add(r.below(9)) - 4 };
                p[16..18].copy_from_slice(&(v as u16).to_be_bytes());
            }
            18 => {
                let v = if r.chance(2) { r.below(65536) } else { (p.len() as u64 - 34).wrapping_add(r.below(9)) - 4 };
                p[38..40].copy_from_slice(&(v as u16).to_be_bytes());
            }
            19 => {
                let i = 44 + r.below(6) as usize;
                p[i] = if r.chance(2) { r.next() as u8 } else { p[i] ^ 1 };
            }
            20 => {
                // IP options (consistent lengths): user space answers, XDP must leave it alone.
                let words = 1 + r.upto(9);
                let opts: Vec<u8> = if r.chance(2) { vec![1; words * 4] } else { r.bytes(words * 4) };
                p.splice(34..34, opts);
                p[14] = 0x45 + words as u8;
                let ip_len = (p.len() - 14) as u16;
                p[16..18].copy_from_slice(&ip_len.to_be_bytes());
            }
            21 => {
                let v: u16 = match r.below(3) {
                    0 => 0x2000,                     // more fragments
                    1 => 1 + r.below(0x1fff) as u16, // an offset
                    _ => r.next() as u16 | 0x4000,   // DF plus anything
                };
                let v = v | (u16::from_be_bytes([p[20], p[21]]) & 0x4000);
                p[20..22].copy_from_slice(&v.to_be_bytes());
            }
            22 => p[23] = [1, 6, 47, 132, 136, r.next() as u8][r.below(6) as usize],
            23 => {
                let port = [11212, 11210, 53, 0, 0xffff, r.next() as u16][r.below(6) as usize];
                p[36..38].copy_from_slice(&port.to_be_bytes());
            }
            24 => {
                let port = [11211, 0, 53, r.next() as u16][r.below(4) as usize];
                p[34..36].copy_from_slice(&port.to_be_bytes());
            }
            25 => {
                let t = [0x86dd, 0x0806, 0x8100, 0x88a8, r.next() as u16][r.below(5) as usize];
                p[12..14].copy_from_slice(&t.to_be_bytes());
            }
            26 => p[14] = [0x65, 0x44, 0x40, 0x46, r.next() as u8][r.below(5) as usize],
            27 => {
                let n = 14 + r.upto(p.len() - 14);
                p.truncate(n); // lengths left claiming more than the frame has
            }
            28 => {
                // Ethernet padding after the datagram: the stack trims it, XDP must not answer it.
                let n = 1 + r.upto(60);
                let pad = r.bytes(n);
                p.extend_from_slice(&pad);
            }
            29 => {
                let src = [[192, 0, 2, 1], [127, 0, 0, 1], [11, 0, 0, 2], [10, 9, 8, 7]][r.below(4) as usize];
                p[26..30].copy_from_slice(&src);
            }
            30 => {
                for _ in 0..1 + r.upto(4) {
                    let i = r.below(p.len() as u64) as usize;
                    p[i] ^= 1 << r.below(8);
                }
            }
            _ => {
                // BPF_PROG_TEST_RUN wants at least an Ethernet header.
                let n = 14 + r.upto(1586);
                p = r.bytes(n);
                if r.chance(2) && p.len() > 14 {
                    p[12..14].copy_from_slice(&[0x08, 0x00]);
                }
            }
        }
        if !r.chance(16) {
            fix_checksum(&mut p);
        }
        p
    }
}

/// Per-reason PASS counts and the TX count of the program, from its counters.
fn counters(path: &KernelPath) -> Vec<(&'static str, u64)> {
    COUNTERS.iter().map(|(c, name)| (*name, path.counter(*c).unwrap())).collect()
}

/// Outcome of one fuzzing run.
struct Report {
    tx: u64,
    pass: u64,
    mismatches: u64,
    examples: Vec<String>,
}

/// Runs `packets` generated packets. `plant_every`: every that many packets, write a wrong value for a
/// cached key straight into the kernel cache, behind the store's back (the checker's own test).
fn fuzz(path: &mut KernelPath, packets: u64, seed: u64, plant_every: Option<u64>) -> Report {
    let cfg = Arc::new(Config::parse_from(["kv-server"]));
    // Largest values the kernel can hold, admission on the first hit: as much as possible goes through XDP.
    let cache = path.cache_handle().unwrap();
    let sync = Arc::new(KernelSync::new(cache.clone(), CACHE_ENTRY_BUF, 1));
    let store = Arc::new(Store::new(StoreOptions::from(&*cfg), Arc::new(NoJournal)).observed_by(sync));
    let ctx = Ctx::new(store, Arc::new(Stats::new()), cfg);
    let mut rng = Rng(seed);
    // Short keys (most requests), keys with bytes above 0x7f, long keys up to the 250-byte limit.
    let keys: Vec<Vec<u8>> = (0..96)
        .map(|i| {
            let n = match i % 8 {
                0 => 200 + rng.upto(50),
                1 => 20 + rng.upto(60),
                _ => 1 + rng.upto(11),
            };
            let hi = i % 5 == 0;
            (0..n)
                .map(|_| if hi && rng.chance(3) { 0x80 + rng.below(0x80) as u8 } else { 0x21 + rng.below(0x5e) as u8 })
                .collect()
        })
        .collect();
    let mut f = Fuzz { rng, ctx, keys, writes: 0 };
    for k in f.keys.clone() {
        let v = f.value();
        udp_reference(&f.ctx, &[b"set ", &k[..], format!(" 0 0 {}\r\n", v.len()).as_bytes(), &v, b"\r\n"].concat());
    }

    let before = counters(path);
    let started = std::time::Instant::now();
    let (mut tx, mut pass, mut mismatches, mut tx_mutated) = (0u64, 0u64, 0u64, 0u64);
    let mut examples: Vec<String> = Vec::new();
    for i in 0..packets {
        while f.rng.chance(20) {
            f.write();
        }
        if plant_every.is_some_and(|n| i % n == 0) {
            let k = f.keys[f.rng.below(f.keys.len() as u64) as usize].clone();
            if cache.contains(&k) {
                cache.insert(&k, &crate::kernel::cache_entry(&k, 7, 7, b"planted", 0, cache.gen()).unwrap()).unwrap();
            }
        }
        let clean = f.request();
        let text = f.mutate_text(clean.clone());
        let v6 = f.rng.chance(4);
        let built = if v6 {
            super::ipv6::packet6_id(17, super::ipv6::SRC, f.rng.next() as u16, &text)
        } else {
            packet(PORT, f.rng.next() as u16, 0, 1, &text)
        };
        let pkt = if v6 { f.mutate_frame6(built.clone()) } else { f.mutate_frame(built.clone()) };
        let mutated = text != clean || pkt != built;
        let expected = delivered(&pkt).map(|d| match d {
            Ok(text) => udp_reference(&f.ctx, text),
            Err(()) => Vec::new(),
        });
        let (action, out) = run(path, &pkt);
        let problem = match action {
            XDP_TX => {
                tx += 1;
                tx_mutated += u64::from(mutated);
                let reply = if v6 { super::ipv6::try_reply_text6(&pkt, &out) } else { try_reply_text(&pkt, &out) };
                match (&expected, reply) {
                    (None, _) => Some("answered a packet the stack would not deliver to the server".to_string()),
                    (_, Err(e)) => Some(e),
                    (Some(want), Ok(got)) if got != *want => Some(format!(
                        "XDP replied {:?}, user space {:?}",
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(want)
                    )),
                    _ => None,
                }
            }
            XDP_PASS => {
                pass += 1;
                (out != pkt).then(|| "passed packet was modified".to_string())
            }
            other => Some(format!("XDP returned {other}")),
        };
        if let Some(p) = problem {
            mismatches += 1;
            if examples.len() < 10 {
                examples.push(format!(
                    "packet {i}: {p}\n  text {:?}\n  frame {:02x?}",
                    String::from_utf8_lossy(&text),
                    &pkt[..pkt.len().min(80)]
                ));
            }
        }
    }
    let elapsed = started.elapsed();
    let after = counters(path);
    let delta: Vec<(&str, u64)> =
        before.iter().zip(&after).map(|((n, b), (_, a))| (*n, a - b)).filter(|(_, d)| *d > 0).collect();
    eprintln!(
        "xdp fuzz: {packets} packets in {elapsed:.1?} (seed {seed}): {tx} XDP_TX, {pass} XDP_PASS, {mismatches} \
         mismatches; {tx_mutated} of the XDP_TX were mutated requests; {} writes interleaved\nxdp fuzz \
         counters: {delta:?}",
        f.writes
    );
    Report { tx, pass, mismatches, examples }
}

/// KV_FUZZ_SEED, or a fresh seed; printed either way.
fn seed() -> u64 {
    let seed: u64 = match std::env::var("KV_FUZZ_SEED") {
        Ok(s) => s.parse().expect("KV_FUZZ_SEED is a u64"),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    };
    eprintln!("xdp fuzz: seed {seed} (replay with KV_FUZZ_SEED={seed})");
    seed
}

#[test]
fn xdp_fuzz_matches_user_space() {
    let Some(mut path) = load_with(512) else { return };
    super::ipv6::allow_client(&mut path);
    let long = std::env::var("KV_LONG").is_ok_and(|v| v == "1");
    let packets: u64 = match std::env::var("KV_FUZZ_PACKETS") {
        Ok(n) => n.parse().expect("KV_FUZZ_PACKETS"),
        Err(_) if long => 3_000_000,
        Err(_) => 200_000,
    };
    let seed = seed();
    let r = fuzz(&mut path, packets, seed, None);
    assert!(r.mismatches == 0, "{} mismatches (seed {seed}):\n{}", r.mismatches, r.examples.join("\n"));
    // The generator must actually reach both outcomes, or the comparison means little.
    assert!(r.tx > packets / 20, "only {} of {packets} packets answered by XDP", r.tx);
    assert!(r.pass > packets / 20, "only {} of {packets} packets passed", r.pass);
    let binary = path.counter(kv_common::Counter::BinHits).unwrap();
    assert!(binary > packets / 100, "only {binary} of {packets} packets answered by XDP as binary gets");
}

/// The checker itself: values planted in the kernel cache behind the store's back are caught.
#[test]
fn xdp_fuzz_flags_planted_stale_entries() {
    let Some(mut path) = load_with(512) else { return };
    let seed = seed();
    let r = fuzz(&mut path, 20_000, seed, Some(50));
    assert!(r.mismatches > 0, "no mismatch reported with wrong values planted in the kernel cache (seed {seed})");
    assert!(r.examples.iter().any(|e| e.contains("planted")), "{:?}", r.examples);
}
