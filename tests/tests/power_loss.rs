//! Power loss, simulated (kv-server only): the data directory sits on a FUSE layer that forgets whatever was
//! not fsynced (`tests/src/lazyfs/`, strict POSIX: a new or renamed name is durable only once its
//! directory is fsynced). At a seeded random moment the layer crashes and the server is SIGKILLed with it;
//! the layer comes back with only its synced state, the server restarts, and every acknowledged write is
//! checked.
//!
//! - `--fsync always`: no acknowledged write lost, no value that was never written;
//! - `--fsync everysec`: the writes lost are the last ones acknowledged, within about a second;
//! - crashes at a random operation during and right after a compaction: nothing acknowledged lost;
//! - `--recover-to` a moment of the round after the power loss: exactly the state at that moment.
//!
//! `KV_CRASH_SEED` replays a run's random choices (timing still varies). Needs /dev/fuse (root): skips
//! without it unless `KV_REQUIRE_FUSE=1` or `KV_REQUIRE_BPF=1` (CI) is set, where it fails instead.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kv_tests::lazyfs::{self, CrashReport, LazyFs};
use kv_tests::{crash_seeds, kv_only, long_or, read_all, show, KeyState, Rng, Server};

/// Seeds that found bugs, replayed (by the test that found them) before its random rounds.
/// - 1796121689803128690 (always, round 0): the server created its data directory without fsyncing the
///   directory above it, so the power cut took the whole directory and every acknowledged write with it.
const ALWAYS_REGRESSIONS: &[u64] = &[1796121689803128690];

/// False (after saying why) when FUSE is missing and not required.
fn fuse_or_skip() -> bool {
    if lazyfs::available() {
        return true;
    }
    let required = ["KV_REQUIRE_FUSE", "KV_REQUIRE_BPF"].iter().any(|v| std::env::var(v).is_ok_and(|v| v == "1"));
    assert!(!required, "/dev/fuse is missing, and KV_REQUIRE_FUSE or KV_REQUIRE_BPF is set");
    eprintln!("SKIP: /dev/fuse is missing (the power-loss tests need FUSE, as root)");
    false
}

/// A server whose data directory is on a [`LazyFs`].
struct Rig {
    // Fields drop in order: the server (and its descriptors on the mount) goes before the layer unmounts.
    server: Option<Server>,
    fs: LazyFs,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Rig {
    fn new(flags: &[&str]) -> Rig {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let fs = LazyFs::mount(&mnt).unwrap_or_else(|e| panic!("mounting the FUSE layer at {}: {e}", mnt.display()));
        // The server creates its data directory itself: that creation must be durable too.
        let dir = mnt.join("data");
        let server = Some(Server::start_in(&dir, flags));
        Rig { server, fs, dir, _tmp: tmp }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server running")
    }

    /// The power cut, if the layer has not crashed yet (`torn`: see [`LazyFs::crash`]); then SIGKILL, so the
    /// server cannot have acknowledged anything after the layer's state was frozen.
    fn power_cut(&mut self, torn: Option<u64>) -> Option<CrashReport> {
        let rep = self.fs.crash(torn);
        self.server = None; // SIGKILL and reap
        rep
    }

    /// After a power cut: the layer comes back with its synced state and the server starts on it.
    fn restart(&mut self, flags: &[&str]) {
        assert!(self.server.is_none());
        self.fs.unmount();
        self.fs.remount().expect("remount");
        self.server = Some(Server::start_in(&self.dir, flags));
    }
}

/// One operation as a client saw it: sent at `sent`, acknowledged at `acked` (None: no acknowledgement,
/// because the server died or answered an error).
struct Op {
    key: String,
    state: KeyState,
    sent: SystemTime,
    acked: Option<SystemTime>,
}

fn connect(s: &Server) -> TcpStream {
    let t = TcpStream::connect(s.addr()).unwrap();
    t.set_nodelay(true).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    t
}

/// Sets (7 in 8) and deletes of its own keys until the connection fails or the server answers otherwise;
/// values unique per (tag, writer, op). Counts its acknowledgements in `acks`.
fn writer(stream: TcpStream, keys: Vec<String>, tag: String, seed: u64, acks: Arc<AtomicUsize>) -> Vec<Op> {
    let mut rng = Rng(seed);
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut ops = Vec::new();
    for op in 0.. {
        let key = keys[rng.below(keys.len() as u64) as usize].clone();
        let (req, state, ok): (Vec<u8>, KeyState, &[&str]) = if rng.below(8) == 0 {
            (format!("delete {key}\r\n").into_bytes(), None, &["DELETED\r\n", "NOT_FOUND\r\n"])
        } else {
            let flags = rng.below(1 << 20) as u32;
            let value = format!("{tag}-op{op}-{}", "x".repeat(rng.below(200) as usize)).into_bytes();
            let mut req = format!("set {key} {flags} 0 {}\r\n", value.len()).into_bytes();
            req.extend_from_slice(&value);
            req.extend_from_slice(b"\r\n");
            (req, Some((flags, value)), &["STORED\r\n"])
        };
        ops.push(Op { key, state, sent: SystemTime::now(), acked: None });
        let mut line = String::new();
        if w.write_all(&req).is_err() || r.read_line(&mut line).is_err() || !ok.contains(&line.as_str()) {
            // Killed, or an error from a log that lost its disk: not acknowledged either way.
            return ops;
        }
        ops.last_mut().unwrap().acked = Some(SystemTime::now());
        acks.fetch_add(1, Ordering::Relaxed);
    }
    unreachable!()
}

/// The writers of a round, and how many writes they have had acknowledged so far.
struct Writers {
    handles: Vec<std::thread::JoinHandle<Vec<Op>>>,
    acks: Arc<AtomicUsize>,
}

impl Writers {
    /// Starts 4 writers over 64 keys each (disjoint sets, so each key's order is its writer's).
    fn start(s: &Server, round: usize, rng: &mut Rng) -> Writers {
        let acks = Arc::new(AtomicUsize::new(0));
        let handles = (0..4)
            .map(|w| {
                let (t, seed, acks) = (connect(s), rng.next(), acks.clone());
                let keys = (0..64).map(|i| format!("p{w}_{i}")).collect();
                std::thread::spawn(move || writer(t, keys, format!("r{round}-w{w}"), seed, acks))
            })
            .collect();
        Writers { handles, acks }
    }

    /// Sleeps `d`, and on until a write has been acknowledged (a restart may still be busy, e.g. compacting
    /// a large log), so that every cut comes after some acknowledged writes.
    fn run_for(&self, d: Duration) {
        std::thread::sleep(d);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acks.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn join(self) -> Vec<Op> {
        self.handles.into_iter().flat_map(|w| w.join().unwrap()).collect()
    }
}

/// Checks the server's state against `model` (the state before the round) plus the round's `ops`, as of
/// `cut`: every op acknowledged by then must be there (its key's last such op), an op after it may be
/// there only if it was sent by `cut` (plus `slack` for the log's coarse clock), nothing else. `cut` None:
/// every acknowledged op. Returns the new model, and the problems found.
fn check(
    s: &Server,
    model: &HashMap<String, KeyState>,
    ops: &[Op],
    cut: Option<(SystemTime, Duration)>,
) -> (HashMap<String, KeyState>, Vec<String>) {
    let mut per_key: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in ops {
        per_key.entry(&op.key).or_default().push(op);
    }
    let mut keys: Vec<String> = model.keys().cloned().collect();
    keys.extend(per_key.keys().filter(|k| !model.contains_key(**k)).map(|k| k.to_string()));
    let got = read_all(&mut s.client(), keys.iter());
    let mut bad = Vec::new();
    for k in &keys {
        let base = model.get(k).cloned().flatten();
        let ops = per_key.get(k.as_str()).map(|v| v.as_slice()).unwrap_or_default();
        let durable = |o: &&&Op| match cut {
            None => o.acked.is_some(),
            Some((t, _)) => o.acked.is_some_and(|a| a <= t),
        };
        let last = ops.iter().rposition(|o| durable(&o));
        let want = last.map(|i| ops[i].state.clone()).unwrap_or(base);
        let after = &ops[last.map_or(0, |i| i + 1)..];
        let maybe: Vec<&KeyState> = after
            .iter()
            .filter(|o| match cut {
                None => true,
                Some((t, slack)) => o.sent <= t + slack,
            })
            .map(|o| &o.state)
            .collect();
        let now = &got[k];
        if *now != want && !maybe.contains(&now) {
            bad.push(format!(
                "{k}: {} after restart, expected {} (or one of {} later writes)",
                show(now),
                show(&want),
                maybe.len()
            ));
        }
    }
    (got, bad)
}

/// `--fsync always`: rounds of concurrent writers, a power cut at a random moment (half the time keeping a
/// torn piece of the last unsynced write), restart, every key checked. KeyState carries over the rounds.
#[test]
fn always_loses_nothing_acknowledged() {
    kv_only!();
    if !fuse_or_skip() {
        return;
    }
    for seed in crash_seeds("power loss, always", ALWAYS_REGRESSIONS) {
        always_rounds(seed, long_or(10, 200));
    }
}

fn always_rounds(seed: u64, rounds: usize) {
    // The layer holds every file in memory, history included: small logs and a short window keep it bounded
    // over the long form (and put compactions and history expiry under the cuts too).
    let flags = ["--fsync", "always", "--compact-min-size", "1m", "--history", "10s"];
    let mut rng = Rng(seed);
    let mut rig = Rig::new(&flags);
    let mut model = HashMap::new();
    let (mut acked, mut maybe_landed, mut torn, mut reverted) = (0, 0, 0, 0);
    let started = Instant::now();
    for round in 0..rounds {
        let ws = Writers::start(rig.server(), round, &mut rng);
        let wait = Duration::from_millis(150 + rng.below(350));
        ws.run_for(wait);
        let tear = (rng.below(2) == 0).then(|| rng.next());
        let rep = rig.power_cut(tear).expect("crash");
        torn += (rep.torn_bytes > 0) as usize;
        reverted += rep.entries_reverted;
        let ops = ws.join();
        let round_acked = ops.iter().filter(|o| o.acked.is_some()).count();
        assert!(round_acked > 0, "round {round} (seed {seed}): nothing acknowledged in {wait:?}");
        acked += round_acked;
        maybe_landed += ops.len() - round_acked;
        rig.restart(&flags);
        let (got, bad) = check(rig.server(), &model, &ops, None);
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}, cut after {wait:?}, {rep:?}): {} keys wrong after a power cut:\n{}",
            bad.len(),
            bad[..bad.len().min(20)].join("\n")
        );
        model = got;
    }
    let (fsyncs, dir_fsyncs) = rig.fs.syncs();
    eprintln!(
        "power loss, always: {rounds} rounds in {:.1?}, {acked} acknowledged writes, 0 lost, 0 never written; \
         {maybe_landed} unacknowledged; {torn} cuts kept a torn write; {reverted} directory entries reverted; \
         {fsyncs} file and {dir_fsyncs} directory fsyncs",
        started.elapsed()
    );
}

/// `--fsync everysec`: one writer of fresh keys every 2 ms, a power cut at a random moment; what is lost must be
/// the last writes acknowledged (the log is a prefix), none acknowledged more than 1.5 s before the cut (the
/// promise of a second, plus the time an fsync takes and a margin). The loss window is printed.
#[test]
fn everysec_loses_at_most_about_a_second() {
    kv_only!();
    if !fuse_or_skip() {
        return;
    }
    for seed in crash_seeds("power loss, everysec", &[]) {
        everysec_rounds(seed, long_or(10, 200));
    }
}

fn everysec_rounds(seed: u64, rounds: usize) {
    let flags = ["--fsync", "everysec"];
    let mut rng = Rng(seed);
    let mut rig = Rig::new(&flags);
    let mut model: HashMap<String, KeyState> = HashMap::new();
    let (mut acked_total, mut lost_total, mut worst, mut windows, mut torn) = (0, 0, Duration::ZERO, Vec::new(), 0);
    for round in 0..rounds {
        let t = connect(rig.server());
        let keys: Vec<String> = (0..1_000_000).map(|i| format!("e{round}_{i}")).take(5000).collect();
        // Fresh keys in order: a set per key, so the loss is a suffix of the acknowledged list.
        let w = std::thread::spawn(move || {
            let mut ops = Vec::new();
            let mut w = t.try_clone().unwrap();
            let mut r = BufReader::new(t);
            for k in keys {
                let v = format!("everysec-{k}").into_bytes();
                let mut req = format!("set {k} 0 0 {}\r\n", v.len()).into_bytes();
                req.extend_from_slice(&v);
                req.extend_from_slice(b"\r\n");
                ops.push(Op { key: k, state: Some((0, v)), sent: SystemTime::now(), acked: None });
                let mut line = String::new();
                if w.write_all(&req).is_err() || r.read_line(&mut line).is_err() || line != "STORED\r\n" {
                    break;
                }
                ops.last_mut().unwrap().acked = Some(SystemTime::now());
                std::thread::sleep(Duration::from_millis(2));
            }
            ops
        });
        std::thread::sleep(Duration::from_millis(1500 + rng.below(1500)));
        let cut_at = SystemTime::now();
        let tear = (rng.below(2) == 0).then(|| rng.next());
        let rep = rig.power_cut(tear).expect("crash");
        let ops = w.join().unwrap();
        let acked: Vec<&Op> = ops.iter().filter(|o| o.acked.is_some()).collect();
        assert!(acked.len() > 100, "round {round} (seed {seed}): only {} writes acknowledged", acked.len());
        rig.restart(&flags);
        // Earlier rounds' keys must be as they were; this round's may miss a suffix.
        let (_, bad) = check(rig.server(), &model, &[], None);
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}): earlier rounds' keys changed:\n{}",
            bad[..bad.len().min(20)].join("\n")
        );
        let got = read_all(&mut rig.server().client(), ops.iter().map(|o| &o.key));
        let mut first_lost = None;
        for (i, o) in ops.iter().enumerate() {
            match &got[&o.key] {
                None if first_lost.is_none() => first_lost = Some(i),
                None => {}
                now if *now == o.state => {
                    assert!(
                        first_lost.is_none(),
                        "round {round} (seed {seed}): {} kept after an earlier write was lost",
                        o.key
                    );
                    model.insert(o.key.clone(), o.state.clone());
                }
                now => panic!(
                    "round {round} (seed {seed}): {}: {} after restart, written {}",
                    o.key,
                    show(now),
                    show(&o.state)
                ),
            }
        }
        let lost: Vec<&&Op> = acked.iter().filter(|o| got[&o.key].is_none()).collect();
        let window =
            lost.first().map(|o| cut_at.duration_since(o.acked.unwrap()).unwrap_or_default()).unwrap_or_default();
        eprintln!(
            "everysec round {round}: {} acknowledged, {} lost, oldest lost acknowledged {window:.0?} before the cut",
            acked.len(),
            lost.len()
        );
        assert!(
            window <= Duration::from_millis(1500),
            "round {round} (seed {seed}): a write acknowledged {window:?} before the power cut was lost ({} lost)",
            lost.len()
        );
        (acked_total, lost_total, worst) = (acked_total + acked.len(), lost_total + lost.len(), worst.max(window));
        // A torn cut keeps the unsynced bytes up to the torn write: only the others show the whole window.
        if rep.torn_bytes > 0 {
            torn += 1;
        } else {
            windows.push(window);
        }
    }
    windows.sort();
    eprintln!(
        "power loss, everysec: {rounds} rounds ({torn} keeping a torn tail), {acked_total} acknowledged writes, \
         {lost_total} lost; loss window (oldest lost acknowledged write before the cut) max {worst:.0?}; over the \
         {} rounds that dropped the whole unsynced tail: median {:.0?}, max {:.0?}",
        windows.len(),
        windows.get(windows.len() / 2).copied().unwrap_or_default(),
        windows.last().copied().unwrap_or_default()
    );
}

/// Compaction under power loss: `--compact-min-size 16k` so the log is rewritten about once a second; the
/// layer crashes itself at a random operation (of 1-60) after `kv.log.tmp` is created, so during the copy, at
/// the fsyncs, at the rename or the directory fsync, or just after. With a history window (hard links) on,
/// as by default. Nothing acknowledged may be lost; the log must open.
#[test]
fn compaction_crashes_lose_nothing() {
    kv_only!();
    if !fuse_or_skip() {
        return;
    }
    for seed in crash_seeds("power loss, compaction", &[]) {
        compaction_rounds(seed, long_or(10, 200));
    }
}

fn compaction_rounds(seed: u64, rounds: usize) {
    let flags = ["--fsync", "always", "--compact-min-size", "16k", "--history", "10s"];
    let mut rng = Rng(seed);
    let mut rig = Rig::new(&flags);
    let mut model = HashMap::new();
    let (mut acked, mut phases) = (0, HashMap::<&str, usize>::new());
    for round in 0..rounds {
        // A compaction takes about 10 counted operations (create, writes and fsyncs of the new file, base marker,
        // history link, fsyncdir, rename, fsyncdir); up to 16 also reaches the writes and unlinks after it.
        let at = 1 + rng.below(16) as u32;
        rig.fs.arm("kv.log.tmp", at);
        let ws = Writers::start(rig.server(), round, &mut rng);
        let rep = match rig.fs.wait_fired(Duration::from_secs(10)) {
            Some(rep) => {
                rig.server = None;
                rep
            }
            None => rig.power_cut(None).expect("crash"),
        };
        let ops = ws.join();
        acked += ops.iter().filter(|o| o.acked.is_some()).count();
        let phase = phase(&rep);
        *phases.entry(phase).or_default() += 1;
        rig.restart(&flags);
        let (got, bad) = check(rig.server(), &model, &ops, None);
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}, crash at op {at} of a compaction: {phase}; events {:?}): {} keys wrong:\n{}",
            rep.events,
            bad.len(),
            bad[..bad.len().min(20)].join("\n")
        );
        model = got;
    }
    let mut p: Vec<_> = phases.into_iter().collect();
    p.sort();
    eprintln!("power loss, compaction: {rounds} rounds, {acked} acknowledged writes, 0 lost; crash points {p:?}");
    assert!(
        p.iter().filter(|(k, _)| *k != "no compaction").map(|(_, n)| n).sum::<usize>() * 2 >= rounds,
        "too few crashes hit a compaction"
    );
}

/// Where in a compaction an armed crash landed, from the operations the layer saw.
fn phase(rep: &CrashReport) -> &'static str {
    if !rep.armed {
        return "no compaction";
    }
    let ev = &rep.events;
    let crashed_at = ev.last().map(String::as_str).unwrap_or("");
    match ev.iter().position(|e| e == "rename kv.log") {
        Some(i) if i + 1 == ev.len() => "at the rename",
        Some(i) if ev[i + 1..ev.len() - 1].iter().any(|e| e.starts_with("fsyncdir")) => "after the directory fsync",
        Some(_) => "after the rename, before the directory fsync",
        None if crashed_at.starts_with("fsyncdir") => "at a directory fsync before the rename",
        None => "copying (before the rename)",
    }
}

/// Point-in-time recovery after power loss: writers with compactions and a history window; a moment T is
/// noted mid-round; power cut; the server restarts with `--recover-to T` and must hold exactly the state at
/// T (each key's last write acknowledged by T, or one sent by T plus 20 ms for the log's coarse clock).
#[test]
fn recover_to_after_power_loss() {
    kv_only!();
    if !fuse_or_skip() {
        return;
    }
    for seed in crash_seeds("power loss, recover-to", &[]) {
        recover_rounds(seed, long_or(6, 100));
    }
}

fn recover_rounds(seed: u64, rounds: usize) {
    // T is at most 3 s before the restart: a 30 s window keeps the former logs that covers.
    let flags = ["--fsync", "always", "--compact-min-size", "16k", "--history", "30s"];
    let mut rng = Rng(seed);
    let mut rig = Rig::new(&flags);
    let mut model = HashMap::new();
    let mut acked = 0;
    for round in 0..rounds {
        let ws = Writers::start(rig.server(), round, &mut rng);
        ws.run_for(Duration::from_millis(300 + rng.below(1200)));
        let t = SystemTime::now();
        std::thread::sleep(Duration::from_millis(100 + rng.below(1000)));
        let tear = (rng.below(2) == 0).then(|| rng.next());
        rig.power_cut(tear).expect("crash");
        let ops = ws.join();
        acked += ops.iter().filter(|o| o.acked.is_some()).count();
        let at = t.duration_since(UNIX_EPOCH).unwrap();
        let to = format!("{}.{:09}", at.as_secs(), at.subsec_nanos());
        let mut with = flags.to_vec();
        with.extend(["--recover-to", &to]);
        rig.restart(&with);
        let (got, bad) = check(rig.server(), &model, &ops, Some((t, Duration::from_millis(20))));
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}): {} keys differ from the state at {to} after --recover-to:\n{}",
            bad.len(),
            bad[..bad.len().min(20)].join("\n")
        );
        model = got;
        // The recovery itself must be durable: cut the power again at once, and a plain start finds it.
        rig.power_cut(None);
        rig.restart(&flags);
        let (_, bad) = check(rig.server(), &model, &[], None);
        assert!(
            bad.is_empty(),
            "round {round} (seed {seed}): the recovery to {to} did not survive a power cut:\n{}",
            bad[..bad.len().min(20)].join("\n")
        );
    }
    eprintln!("power loss, recover-to: {rounds} rounds, {acked} acknowledged writes, every recovery exact");
}
