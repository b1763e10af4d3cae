//! Differential test: generated cache states and requests, answered by the XDP program (through
//! BPF_PROG_TEST_RUN, with the kernel cache kept by the real `KernelSync`) and by the user-space server.
//! Whenever XDP answers, its reply must equal the user-space reply byte for byte; otherwise it must pass
//! the packet untouched. XDP_DROP and XDP_ABORTED are never acceptable.

use std::sync::Arc;

use bytes::BytesMut;
use clap::Parser as _;
use kv_common::xdp_action::{XDP_PASS, XDP_TX};
use kv_common::{BIN_OP_GET, BIN_OP_GETK};

use super::binary::{bin_request, udp_reply};
use super::{packet, reply_text, run};
use crate::config::Config;
use crate::exec::{execute, Ctx};
use crate::kernel::{bpf_required, KernelOpts, KernelPath, KernelSync};
use crate::protocol::{parse, Limits, Parsed};
use crate::record::NoJournal;
use crate::stats::Stats;
use crate::store::{Store, StoreOptions};

const PORT: u16 = 11211;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs one text request through the user-space pipeline.
fn user_space(ctx: &Ctx, text: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut rest = text;
    while !rest.is_empty() {
        match parse(rest, &Limits::default()) {
            Parsed::Command { cmd, consumed } => {
                execute(&cmd, ctx, &mut out);
                rest = &rest[consumed..];
            }
            Parsed::Error { reply, consumed, .. } => {
                out.extend_from_slice(reply);
                rest = &rest[consumed..];
            }
            Parsed::Incomplete | Parsed::Partial { .. } => break,
        }
    }
    out.to_vec()
}

fn random_key(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 250,
        1 => 100 + rng.below(150) as usize,
        _ => 1 + rng.below(12) as usize,
    };
    (0..len).map(|_| 0x21 + rng.below(0x7f - 0x21) as u8).collect()
}

fn random_value(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(10) {
        0 => 1000 + rng.below(400) as usize, // around the kernel's value limit
        1 => 0,
        _ => rng.below(120) as usize,
    };
    (0..len).map(|_| rng.next() as u8).collect()
}

/// A binary request for `key`: mostly get/getk with random opaque (and now and then data type, vbucket
/// and CAS), sometimes a shape the XDP path must leave alone.
fn binary_get(rng: &mut Rng, key: &[u8]) -> Vec<u8> {
    let opcode = match rng.below(10) {
        0 => [0x09, 0x0d, 0x0a, 0x1d][rng.below(4) as usize], // getq, getkq, noop, gat
        1..=4 => BIN_OP_GETK,
        _ => BIN_OP_GET,
    };
    let mut t = bin_request(opcode, key, b"", b"", rng.next() as u32);
    if rng.below(4) == 0 {
        t[5] = rng.next() as u8;
        t[6..8].copy_from_slice(&(rng.next() as u16).to_be_bytes());
        t[16..24].copy_from_slice(&rng.next().to_be_bytes());
    }
    match rng.below(20) {
        0 => t.extend_from_slice(&bin_request(BIN_OP_GET, key, b"", b"", 1)),
        1 => t[4] = 4,
        2 => t.truncate(t.len() - 1),
        _ => {}
    }
    t
}

#[test]
fn xdp_replies_equal_user_space_replies() {
    let mut path =
        match KernelPath::load(KernelOpts { port: PORT, cache_entries: 4096, log: false, ..Default::default() }) {
            Ok(p) => p,
            Err(e) if !bpf_required() => {
                eprintln!("SKIP: cannot load BPF here ({e:#}); set KV_REQUIRE_BPF=1 to make this fail");
                return;
            }
            Err(e) => panic!("BPF required but loading failed: {e:#}"),
        };
    path.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    let cfg = Arc::new(Config::parse_from(["kv-server"]));
    // Admit on the first user-space hit, so the kernel holds much of the key pool.
    let sync = Arc::new(KernelSync::new(path.cache_handle().unwrap(), 1024, 1));
    let store = Arc::new(Store::new(StoreOptions::from(&*cfg), Arc::new(NoJournal)).observed_by(sync.clone()));
    let ctx = Ctx::new(store, Arc::new(Stats::new()), cfg);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let keys: Vec<Vec<u8>> = (0..48).map(|_| random_key(&mut rng)).collect();
    let (mut tx, mut passed, mut writes, mut bin_tx) = (0u32, 0u32, 0u32, 0u32);
    for round in 0..4000u32 {
        let key = &keys[rng.below(keys.len() as u64) as usize];
        match rng.below(20) {
            0..=5 => {
                let value = random_value(&mut rng);
                let flags = if rng.below(4) == 0 { u32::MAX } else { rng.below(1000) as u32 };
                let mut req =
                    format!("set {} {flags} 0 {}\r\n", String::from_utf8_lossy(key), value.len()).into_bytes();
                req.extend_from_slice(&value);
                req.extend_from_slice(b"\r\n");
                assert_eq!(user_space(&ctx, &req), b"STORED\r\n");
                writes += 1;
            }
            6 => {
                user_space(&ctx, &[b"delete ", &key[..], b"\r\n"].concat());
                writes += 1;
            }
            7 => {
                let req = [b"set ", &key[..], b" 0 0 2\r\n41\r\nincr ", &key[..], b" 1\r\n"].concat();
                assert!(user_space(&ctx, &req).starts_with(b"STORED\r\n42"));
                writes += 1;
            }
            8 if round % 500 == 0 => {
                assert_eq!(user_space(&ctx, b"flush_all\r\n"), b"OK\r\n");
            }
            9 | 10 => {
                let key = keys[rng.below(keys.len() as u64) as usize].clone();
                let text = binary_get(&mut rng, &key);
                let pkt = packet(PORT, round as u16, 0, 1, &text);
                let (action, out) = run(&mut path, &pkt);
                let expected = udp_reply(&ctx, &text);
                match action {
                    XDP_TX => {
                        bin_tx += 1;
                        assert_eq!(
                            reply_text(&pkt, &out),
                            expected,
                            "round {round}: XDP reply differs for {text:02x?}"
                        );
                    }
                    XDP_PASS => assert_eq!(out, pkt, "round {round}: passed packet was modified"),
                    other => panic!("round {round}: XDP returned {other} for {text:02x?}"),
                }
            }
            _ => {
                let cmd: &[u8] = if rng.below(3) == 0 { b"gets" } else { b"get" };
                let n = 1 + rng.below(24) as usize;
                let mut text = cmd.to_vec();
                for _ in 0..n {
                    text.push(b' ');
                    text.extend_from_slice(&keys[rng.below(keys.len() as u64) as usize]);
                }
                // Now and then a shape the XDP path must leave alone.
                match rng.below(30) {
                    0 => text.push(b' '),
                    1 => text.insert(cmd.len(), b' '),
                    2 => text[0] = b'G',
                    _ => {}
                }
                text.extend_from_slice(b"\r\n");
                let pkt = packet(PORT, round as u16, 0, 1, &text);
                let (action, out) = run(&mut path, &pkt);
                let expected = user_space(&ctx, &text);
                match action {
                    XDP_TX => {
                        tx += 1;
                        assert_eq!(
                            String::from_utf8_lossy(&reply_text(&pkt, &out)),
                            String::from_utf8_lossy(&expected),
                            "round {round}: XDP reply differs for {:?}",
                            String::from_utf8_lossy(&text)
                        );
                    }
                    XDP_PASS => {
                        passed += 1;
                        assert_eq!(out, pkt, "round {round}: passed packet was modified");
                    }
                    other => panic!("round {round}: XDP returned {other} for {:?}", String::from_utf8_lossy(&text)),
                }
            }
        }
    }
    eprintln!(
        "differential: {tx} XDP replies equal to user space ({bin_tx} binary more), {passed} passed untouched, \
         {writes} writes"
    );
    assert!(tx > 200, "too few kernel answers to mean anything: {tx}");
    assert!(bin_tx > 50, "too few binary kernel answers to mean anything: {bin_tx}");
    assert!(passed > 200, "too few passes: {passed}");
}

#[test]
fn keys_admitted_through_the_store_are_found_by_xdp() {
    let Ok(mut path) =
        KernelPath::load(KernelOpts { port: PORT, cache_entries: 16384, log: false, ..Default::default() })
    else {
        assert!(!bpf_required(), "BPF required");
        return;
    };
    path.allow(std::net::Ipv4Addr::new(10, 0, 0, 0).into(), 8).unwrap();
    let cfg = Arc::new(Config::parse_from(["kv-server"]));
    let sync = Arc::new(KernelSync::new(path.cache_handle().unwrap(), 1024, 2));
    let store = Arc::new(Store::new(StoreOptions::from(&*cfg), Arc::new(NoJournal)).observed_by(sync.clone()));
    let ctx = Ctx::new(store, Arc::new(Stats::new()), cfg);
    let n = 300;
    for i in 0..n {
        let req = format!("set key:{i} 0 0 32\r\n{}\r\n", "x".repeat(32));
        assert_eq!(user_space(&ctx, req.as_bytes()), b"STORED\r\n");
    }
    for _ in 0..2 {
        for i in 0..n {
            user_space(&ctx, format!("get key:{i}\r\n").as_bytes());
        }
    }
    let h = path.cache_handle().unwrap();
    let held = (0..n).filter(|i| h.contains(format!("key:{i}").as_bytes())).count();
    assert!(held >= n * 98 / 100, "only {held} of {n} hot keys are in the kernel cache");
    let mut lost = Vec::new();
    for i in (0..n).filter(|i| h.contains(format!("key:{i}").as_bytes())) {
        let text = format!("get key:{i}\r\n");
        let (action, _) = run(&mut path, &packet(PORT, i as u16, 0, 1, text.as_bytes()));
        if action != XDP_TX {
            lost.push(i);
        }
    }
    let reasons: Vec<(&str, u64)> = kv_common::COUNTERS
        .iter()
        .map(|(c, name)| (*name, path.counter(*c).unwrap()))
        .filter(|(_, v)| *v > 0)
        .collect();
    assert!(
        lost.is_empty(),
        "{} admitted keys missed by XDP: {:?} {reasons:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
}
