//! Start-up replay of the log into the store (nothing replayed is journaled or observed again), on one thread
//! ([`Store::apply`]) or spread over several by shard ([`Replayer`]).

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;

use super::item::Meta;
use super::Store;
use crate::record::Record;

impl Store {
    /// Applies a replayed record at start-up (neither journaled nor observed). Keeps the CAS counter above
    /// every CAS seen and drops items that are already expired or flushed.
    pub fn apply(&self, rec: &Record<'_>) {
        let now = self.now();
        let quiet = |_: &[u8], _| {};
        let env = self.env(now, &quiet);
        match *rec {
            Record::Set { key, flags, exptime, cas, time, value } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(h) = g.find_hit(hash, key) {
                    g.remove_hit(h, &self.budget);
                }
                let flushed = env.flush_at != 0 && now >= env.flush_at && time < env.flush_at;
                let expired = exptime != 0 && exptime <= now;
                if !flushed && !expired {
                    let meta = Meta { cas, exptime, time, atime: time, flags, bits: 0 };
                    g.insert(hash, key, &[value], &meta, &env);
                }
                self.finish(g);
            }
            Record::Touch { key, exptime, cas } => {
                self.cas.fetch_max(cas, Ordering::Relaxed);
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(l) = g.find(hash, key) {
                    let mut e = g.item_mut(l);
                    e.set_exptime(exptime);
                    e.set_cas(cas);
                    g.note_exptime(l, exptime);
                    if g.item(l).expired(now) {
                        g.remove(l, hash, &self.budget);
                    }
                }
                self.finish(g);
            }
            Record::Delete { key } => {
                let (hash, si) = self.locate(key);
                let mut g = self.shards[si].lock();
                if let Some(h) = g.find_hit(hash, key) {
                    g.remove_hit(h, &self.budget);
                }
                self.finish(g);
            }
            Record::FlushAll { at, max_cas } => {
                self.flush_at.store(at, Ordering::Relaxed);
                for s in self.shards.iter() {
                    s.lock().retain(&self.budget, |e| e.cas() <= max_cas || (at <= now && e.time() < at));
                }
            }
        }
    }
}

/// Records per worker batch (bytes): large enough that the channel costs nothing per record.
const BATCH_BYTES: usize = 64 << 10;
/// Batches queued per worker before the reader waits: bounds the memory a slow worker can pile up.
const QUEUE: usize = 8;

enum Msg {
    Batch(Vec<u8>),
    /// Answer once everything sent before is applied.
    Sync(mpsc::Sender<()>),
}

/// Replays records into the store on several threads: each worker owns the shards whose index is its own
/// modulo the worker count, so all records of a key go to one worker, in log order, and workers never contend
/// for a shard lock. A flush_all (which reaches every shard) waits until the workers have applied everything
/// before it. The caller (the log's reader) only routes copies of the records, so decoding and checking the log
/// overlaps with applying it.
pub struct Replayer<'scope, 'env> {
    store: &'env Store,
    batches: Vec<Vec<u8>>,
    queues: Vec<mpsc::SyncSender<Msg>>,
    workers: Vec<thread::ScopedJoinHandle<'scope, ()>>,
}

impl<'scope, 'env> Replayer<'scope, 'env> {
    /// `workers` threads in `scope` (at least one; more than the shards would idle).
    pub fn new(store: &'env Store, scope: &'scope thread::Scope<'scope, 'env>, workers: usize) -> Self {
        let n = workers.clamp(1, store.shards.len());
        let mut queues = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for _ in 0..n {
            let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
            queues.push(tx);
            handles.push(scope.spawn(move || work(store, rx)));
        }
        let batches = (0..n).map(|_| Vec::with_capacity(BATCH_BYTES + 512)).collect();
        Replayer { store, batches, queues, workers: handles }
    }

    /// Queues `rec` for the worker that owns its shard (a flush_all is applied here, after the others).
    pub fn apply(&mut self, rec: &Record<'_>) {
        let key = match *rec {
            Record::Set { key, .. } | Record::Touch { key, .. } | Record::Delete { key } => key,
            Record::FlushAll { .. } => {
                self.sync();
                return self.store.apply(rec);
            }
        };
        let w = self.store.locate(key).1 % self.queues.len();
        pack(rec, &mut self.batches[w]);
        if self.batches[w].len() >= BATCH_BYTES {
            self.send(w);
        }
    }

    /// Applies everything queued and stops the workers.
    pub fn finish(mut self) {
        for w in 0..self.queues.len() {
            self.send(w);
        }
        self.queues.clear();
        for h in self.workers.drain(..) {
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    }

    fn send(&mut self, w: usize) {
        if self.batches[w].is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.batches[w], Vec::with_capacity(BATCH_BYTES + 512));
        // A worker only stops early by panicking, which finish() reports.
        let _ = self.queues[w].send(Msg::Batch(batch));
    }

    fn sync(&mut self) {
        let (tx, rx) = mpsc::channel();
        for w in 0..self.queues.len() {
            self.send(w);
            let _ = self.queues[w].send(Msg::Sync(tx.clone()));
        }
        drop(tx);
        while rx.recv().is_ok() {}
    }
}

fn work(store: &Store, rx: mpsc::Receiver<Msg>) {
    for msg in rx {
        match msg {
            Msg::Batch(b) => {
                let mut at = 0;
                while at < b.len() {
                    let (rec, n) = unpack(&b[at..]);
                    store.apply(&rec);
                    at += n;
                }
            }
            Msg::Sync(done) => {
                let _ = done.send(());
            }
        }
    }
}

// A batch holds records back to back: tag u8 | klen u8 | key | then for a Set flags u32 | exptime | cas | time
// (u64) | vlen u32 | value, for a Touch exptime | cas (u64), for a Delete nothing. Native endianness: it never
// leaves the process.
const SET: u8 = 1;
const TOUCH: u8 = 2;
const DELETE: u8 = 3;

fn pack(rec: &Record<'_>, out: &mut Vec<u8>) {
    let head = |out: &mut Vec<u8>, tag: u8, key: &[u8]| {
        out.push(tag);
        // Keys are at most 250 bytes (the log refuses longer ones).
        out.push(key.len() as u8);
        out.extend_from_slice(key);
    };
    match *rec {
        Record::Set { key, flags, exptime, cas, time, value } => {
            head(out, SET, key);
            out.extend_from_slice(&flags.to_ne_bytes());
            for v in [exptime, cas, time] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            // Values are at most 1 GiB (the log refuses longer ones).
            out.extend_from_slice(&(value.len() as u32).to_ne_bytes());
            out.extend_from_slice(value);
        }
        Record::Touch { key, exptime, cas } => {
            head(out, TOUCH, key);
            out.extend_from_slice(&exptime.to_ne_bytes());
            out.extend_from_slice(&cas.to_ne_bytes());
        }
        Record::Delete { key } => head(out, DELETE, key),
        Record::FlushAll { .. } => unreachable!("flush_all is applied by the reader"),
    }
}

fn unpack(b: &[u8]) -> (Record<'_>, usize) {
    let u32_at = |i: usize| u32::from_ne_bytes(b[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let klen = b[1] as usize;
    let key = &b[2..2 + klen];
    let at = 2 + klen;
    match b[0] {
        SET => {
            let vlen = u32_at(at + 28) as usize;
            let value = &b[at + 32..at + 32 + vlen];
            let rec = Record::Set {
                key,
                flags: u32_at(at),
                exptime: u64_at(at + 4),
                cas: u64_at(at + 12),
                time: u64_at(at + 20),
                value,
            };
            (rec, at + 32 + vlen)
        }
        TOUCH => (Record::Touch { key, exptime: u64_at(at), cas: u64_at(at + 8) }, at + 16),
        _ => (Record::Delete { key }, at),
    }
}
