//! One UDP request datagram through `server::udp::handle` and `Frames`, the code `serve` runs,
//! against a fresh in-memory store (no log, no BPF, fixed clock) so every input replays the same.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use clap::Parser as _;
use kv_common::{UDP_FRAME_HEADER_LEN, UDP_MAX_PAYLOAD};
use kv_user::config::Config;
use kv_user::exec::Ctx;
use kv_user::record::NoJournal;
use kv_user::server::udp::{handle, Frames};
use kv_user::stats::Stats;
use kv_user::store::{ManualClock, Store, StoreOptions};
use libfuzzer_sys::fuzz_target;

fn config() -> Arc<Config> {
    static CONFIG: OnceLock<Arc<Config>> = OnceLock::new();
    // Small limits so short inputs reach eviction and the too-large paths.
    CONFIG
        .get_or_init(|| Arc::new(Config::parse_from(["kv-server", "--no-persist", "--no-bpf", "-m", "1", "-I", "4k"])))
        .clone()
}

fuzz_target!(|datagram: &[u8]| {
    let config = config();
    // One shard: the same code paths, without setting up 64 shards per input.
    let store = Store::with_clock(
        StoreOptions { shards: 1, ..StoreOptions::from(&*config) },
        Arc::new(NoJournal),
        Arc::new(ManualClock::new(1_700_000_000)),
    );
    let ctx = Ctx::new(Arc::new(store), Arc::new(Stats::new()), config);
    let (mut input, mut reply) = (BytesMut::new(), BytesMut::new());
    let Some(req) = handle(datagram, &ctx, &mut input, &mut reply) else {
        // No header, or a multi-datagram request (dropped, as memcached does).
        let multi = datagram.len() >= UDP_FRAME_HEADER_LEN && datagram[4..6] != [0, 1];
        assert!(datagram.len() < UDP_FRAME_HEADER_LEN || multi, "a single-datagram request went unanswered");
        return;
    };
    assert_eq!(req.req_id, u16::from_be_bytes([datagram[0], datagram[1]]));
    assert_eq!(req.seq, 0, "nothing is journaled without a log");

    let mut frames = Frames::new(req.req_id, &reply);
    let mut frame = BytesMut::new();
    let mut joined = Vec::new();
    let mut count = 0usize;
    let mut total = None;
    while frames.next_into(&mut frame) {
        assert!(
            frame.len() > UDP_FRAME_HEADER_LEN && frame.len() <= UDP_MAX_PAYLOAD,
            "datagram of {} bytes",
            frame.len()
        );
        let h: Vec<u16> = frame[..UDP_FRAME_HEADER_LEN].chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
        assert_eq!(h[0], req.req_id, "request id");
        assert_eq!(usize::from(h[1]), count, "sequence number");
        assert_eq!(*total.get_or_insert(h[2]), h[2], "datagram count changed");
        assert_eq!(h[3], 0, "reserved");
        joined.extend_from_slice(&frame[UDP_FRAME_HEADER_LEN..]);
        count += 1;
    }
    assert_eq!(count, total.map_or(0, usize::from), "datagram count");
    // Inputs are at most 64 KiB, far from the 65535-datagram limit: the reply goes out whole.
    assert_eq!(joined, &reply[..], "datagrams do not add up to the reply");
    assert!(!frames.next_into(&mut frame), "frames after the end");
});
