//! The request pipeline shared by TCP and UDP: parse every complete request in the input buffer,
//! execute it, and append the replies to one output buffer so a batch goes out in one write.

use bytes::{Buf as _, BytesMut};

use super::Shared;
use crate::exec::{self, Ctx};
use crate::persist::REJECTED_SEQ;
use crate::protocol::binary::{self, reply as bin_reply, BinParsed, Echo, Status};
use crate::protocol::{self, reply, Limits, Parsed};
use crate::record::REFUSED_SEQ;
use crate::store::Reservation;

/// A request longer than this is buffered only against memory reserved from the store (`-m`).
pub const RESERVE_ABOVE: usize = 16 * 1024;

/// Per-connection parsing state.
pub struct Pipeline {
    limits: Limits,
    /// Bytes of a refused data block still to discard (memcached "swallows" a too-large value
    /// instead of buffering it).
    swallow: usize,
    /// Where the multiget at the front of the input resumes (byte offset into its keys): its reply is
    /// sent in pieces of about the soft limit.
    resume: usize,
    /// Memory charged to the store for the large value arriving at the front of the input.
    upload: Option<Reservation>,
    /// The last `run`'s replies, for [`Pipeline::settle`]: where `out` held them and their records.
    base: usize,
    spans: Vec<Span>,
    /// The protocol, set by the connection's first byte as memcached does: binary if it is the
    /// request magic (None until a byte arrives).
    binary: Option<bool>,
}

/// One executed request's reply: it ends at `end` in `out`; `seq` is its journal record (0: none).
#[derive(Debug, Clone, Copy)]
struct Span {
    end: usize,
    seq: u64,
    /// A text command's `noreply`: memcached suppresses even its errors.
    noreply: bool,
    /// A binary request's echo: its error is a binary response (quiet never hides errors).
    bin: Option<Echo>,
}

/// A reply that cannot be sent in pieces (UDP) is refused past this size, as memcached refuses one
/// that needs more datagrams than a frame header can number.
const UNSPLIT_REPLY_MAX: usize = u16::MAX as usize * (kv_common::UDP_MAX_PAYLOAD - kv_common::UDP_FRAME_HEADER_LEN);

/// What one pass over the input produced.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Highest journal sequence number among the executed requests (0: nothing logged).
    pub seq: u64,
    /// The client asked to quit, or the input was unrecoverable: flush `out` and close.
    pub close: bool,
    /// Stopped early because `out` reached its soft limit; call again after flushing.
    pub more: bool,
}

impl Pipeline {
    pub fn new(item_size_max: usize) -> Self {
        Self {
            limits: Limits { item_size_max },
            swallow: 0,
            resume: 0,
            upload: None,
            base: 0,
            spans: Vec::new(),
            binary: None,
        }
    }

    /// Nothing pending: no data to swallow, no multiget half sent, no upload in progress.
    pub fn idle(&self) -> bool {
        self.swallow == 0 && self.resume == 0 && self.upload.is_none()
    }

    /// Runs every complete request at the front of `input`, leaving an incomplete tail in place.
    pub fn run(&mut self, input: &mut BytesMut, ctx: &Ctx, out: &mut BytesMut, out_soft_limit: usize) -> Batch {
        let mut batch = Batch::default();
        self.base = out.len();
        self.spans.clear();
        loop {
            if self.swallow > 0 {
                let n = self.swallow.min(input.len());
                input.advance(n);
                self.swallow -= n;
                if self.swallow > 0 {
                    return batch;
                }
            }
            if input.is_empty() {
                return batch;
            }
            if out.len() >= out_soft_limit {
                batch.more = true;
                return batch;
            }
            if *self.binary.get_or_insert(input[0] == binary::REQUEST_MAGIC) {
                match self.binary_step(input, ctx, out, &mut batch) {
                    Some(consumed) => input.advance(consumed),
                    None => return batch,
                }
                if batch.close {
                    return batch;
                }
                continue;
            }
            let consumed = match protocol::parse(input, &self.limits) {
                Parsed::Incomplete => return batch,
                Parsed::Partial { total, noreply } => {
                    if self.wait_for_upload(total, input, ctx) {
                        return batch;
                    }
                    // memcached refuses the item before reading its data, then swallows it.
                    if !noreply {
                        out.extend_from_slice(reply::OUT_OF_MEMORY_STORE);
                    }
                    self.spans.push(Span { end: out.len(), seq: 0, noreply, bin: None });
                    input.len()
                }
                Parsed::Command { cmd, consumed } => {
                    // The value is complete: the store charges it as an item from here on.
                    self.upload = None;
                    let start = out.len();
                    let stop_at = out_soft_limit.min(UNSPLIT_REPLY_MAX);
                    let (o, resume) = exec::execute_from(&cmd, self.resume, ctx, out, stop_at);
                    batch.seq = batch.seq.max(o.seq);
                    self.spans.push(Span {
                        end: out.len(),
                        seq: o.seq,
                        noreply: !cmd.is_meta() && out.len() == start,
                        bin: None,
                    });
                    batch.close |= o.close;
                    match resume {
                        None => {
                            self.resume = 0;
                            consumed
                        }
                        Some(at) if out_soft_limit < UNSPLIT_REPLY_MAX => {
                            // Flush, then come back to the same line (still in `input`) for the rest.
                            self.resume = at;
                            batch.more = true;
                            return batch;
                        }
                        Some(_) => {
                            // memcached drops the partial reply when its response buffers run out.
                            out.truncate(start);
                            out.extend_from_slice(reply::OUT_OF_MEMORY_GET);
                            self.spans.last_mut().expect("just pushed").end = out.len();
                            consumed
                        }
                    }
                }
                Parsed::Error { reply, consumed, swallow, close, too_large_key } => {
                    let seq = match too_large_key {
                        Some(key) => {
                            // An empty reply means the command had noreply.
                            let o = exec::reject_too_large_noreply(key, reply.is_empty(), ctx, out);
                            batch.seq = batch.seq.max(o.seq);
                            o.seq
                        }
                        None => {
                            out.extend_from_slice(reply);
                            0
                        }
                    };
                    self.spans.push(Span { end: out.len(), seq, noreply: reply.is_empty(), bin: None });
                    self.swallow = swallow;
                    batch.close |= close;
                    consumed
                }
            };
            input.advance(consumed);
            if batch.close {
                return batch;
            }
        }
    }
}

impl Pipeline {
    /// A request of `total` bytes has begun arriving: true to wait for the rest (a large one into a buffer
    /// reserved for exactly its size, instead of doubling into it); false when the store has no room for
    /// it, in which case the rest of it is swallowed and the caller writes the refusal.
    fn wait_for_upload(&mut self, total: usize, input: &mut BytesMut, ctx: &Ctx) -> bool {
        if total <= RESERVE_ABOVE || self.upload.is_some() {
            return true;
        }
        match ctx.store.reserve(total as u64) {
            Some(r) => {
                input.reserve(total - input.len());
                self.upload = Some(r);
                true
            }
            None => {
                ctx.stats.store_no_memory.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.swallow = total - input.len();
                false
            }
        }
    }

    /// One binary request from the front of `input`: the bytes it consumed, or None to wait for more
    /// (or, with `batch.close`, to close). Large values are reserved and refused as for text.
    fn binary_step(&mut self, input: &mut BytesMut, ctx: &Ctx, out: &mut BytesMut, batch: &mut Batch) -> Option<usize> {
        let (echo, seq, consumed) = match binary::parse(input, &self.limits) {
            BinParsed::Incomplete => return None,
            BinParsed::BadMagic => {
                batch.close = true;
                return None;
            }
            BinParsed::Partial { total, echo } => {
                if self.wait_for_upload(total, input, ctx) {
                    return None;
                }
                bin_reply::error(out, echo, Status::OutOfMemory);
                (echo, 0, input.len())
            }
            BinParsed::Request { req, consumed } => {
                self.upload = None;
                let o = exec::execute_binary(&req, ctx, out);
                batch.close |= o.close;
                (req.echo, o.seq, consumed)
            }
            BinParsed::Error { echo, status, consumed, swallow, close, too_large_key } => {
                let o = if status == Status::TooLarge {
                    exec::reject_too_large_binary(echo, too_large_key, ctx, out)
                } else {
                    bin_reply::error(out, echo, status);
                    exec::Outcome::default()
                };
                self.swallow = swallow;
                batch.close |= close;
                (echo, o.seq, consumed)
            }
        };
        batch.seq = batch.seq.max(seq);
        self.spans.push(Span { end: out.len(), seq, noreply: false, bin: Some(echo) });
        Some(consumed)
    }

    /// Makes the replies of the last [`Pipeline::run`] (in `out`) report only what is durable: once the
    /// batch's highest record `seq` is, there is nothing to do (one wait). Otherwise each request is
    /// looked at: a write whose record failed (or was refused) gets `SERVER_ERROR <cause>` instead of its
    /// reply (nothing for `noreply`), every other request keeps its own. Replies after a write that was
    /// applied and then undone could have seen it, so they too become that error.
    pub async fn settle(&self, out: &mut BytesMut, seq: u64, shared: &Shared) {
        if shared.durable(seq).await.is_ok() {
            return;
        }
        let mut fixed = BytesMut::with_capacity(out.len());
        fixed.extend_from_slice(&out[..self.base]);
        let (mut start, mut undone): (usize, Option<String>) = (self.base, None);
        for span in &self.spans {
            let own = &out[start..span.end];
            start = span.end;
            let error = match shared.durable(span.seq).await {
                Err(e) => {
                    if undone.is_none() && span.seq != REFUSED_SEQ && span.seq != REJECTED_SEQ {
                        undone = Some(e.to_string());
                    }
                    Some(e.to_string())
                }
                Ok(()) => undone.clone().filter(|_| !own.is_empty()),
            };
            match error {
                Some(_) if span.noreply => {}
                Some(e) if span.bin.is_some() => {
                    let echo = span.bin.expect("checked");
                    bin_reply::error_with(&mut fixed, echo, Status::OutOfMemory, e.as_bytes());
                }
                Some(e) => {
                    fixed.extend_from_slice(b"SERVER_ERROR ");
                    fixed.extend_from_slice(e.as_bytes());
                    fixed.extend_from_slice(b"\r\n");
                }
                None => fixed.extend_from_slice(own),
            }
        }
        fixed.extend_from_slice(&out[start..]);
        *out = fixed;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::BytesMut;
    use clap::Parser as _;

    use super::*;
    use crate::config::Config;
    use crate::record::NoJournal;
    use crate::stats::Stats;
    use crate::store::{Store, StoreOptions};

    fn ctx() -> Ctx {
        let config = Config::parse_from(["kv-server"]);
        let store = Store::new(StoreOptions::from(&config), Arc::new(NoJournal));
        Ctx::new(Arc::new(store), Arc::new(Stats::new()), Arc::new(config))
    }

    /// Runs `input` through a pipeline as a connection would, flushing `out` whenever it asks to.
    fn drain(p: &mut Pipeline, input: &[u8], ctx: &Ctx, soft_limit: usize) -> (Vec<u8>, usize, usize) {
        let (mut input, mut out) = (BytesMut::from(input), BytesMut::new());
        let (mut sent, mut flushes, mut largest) = (Vec::new(), 0, 0);
        loop {
            let batch = p.run(&mut input, ctx, &mut out, soft_limit);
            largest = largest.max(out.len());
            sent.extend_from_slice(&out);
            out.clear();
            if !batch.more {
                return (sent, flushes, largest);
            }
            flushes += 1;
        }
    }

    #[test]
    fn a_multiget_reply_goes_out_in_pieces() {
        let ctx = ctx();
        let mut p = Pipeline::new(1024 * 1024);
        let v = "x".repeat(1000);
        let (ok, _, _) = drain(&mut p, format!("set a 0 0 1000\r\n{v}\r\nset b 0 0 1\r\nb\r\n").as_bytes(), &ctx, 4096);
        assert_eq!(ok, b"STORED\r\nSTORED\r\n");
        // 100 keys, every other one a miss, then another command in the same input.
        let keys: String = (0..50).map(|_| " a  nope b").collect();
        let (sent, flushes, largest) = drain(&mut p, format!("get{keys}\r\nmn\r\n").as_bytes(), &ctx, 4096);
        let one = format!("VALUE a 0 1000\r\n{v}\r\nVALUE b 0 1\r\nb\r\n");
        assert_eq!(String::from_utf8(sent).unwrap(), format!("{}END\r\nMN\r\n", one.repeat(50)));
        assert!(flushes >= 10, "{flushes} flushes");
        assert!(largest < 4096 + 1100, "{largest} bytes held at once");
        // Without a soft limit (UDP) a reply too large to frame is refused whole.
        let big = "y".repeat(1000 * 1000 - 100);
        drain(&mut p, format!("set c 0 0 {}\r\n{big}\r\n", big.len()).as_bytes(), &ctx, usize::MAX);
        let (sent, _, _) = drain(&mut p, format!("get a{}\r\nmn\r\n", " c".repeat(100)).as_bytes(), &ctx, usize::MAX);
        assert_eq!(sent, b"SERVER_ERROR out of memory writing get response\r\nMN\r\n");
    }

    /// Large values still arriving are charged to the store's memory: a pending upload holds its
    /// reservation, one past what may be reserved is refused with memcached's error and its data
    /// swallowed, and a completed set gives its reservation back.
    #[test]
    fn partial_uploads_are_charged_to_the_memory_limit() {
        let config = Config::parse_from(["kv-server", "-m", "2", "-I", "512k"]);
        let store = Arc::new(Store::new(StoreOptions::from(&config), Arc::new(NoJournal)));
        let ctx = Ctx::new(store.clone(), Arc::new(Stats::new()), Arc::new(config));
        let base = store.memory_used();
        let mut out = BytesMut::new();
        let mut a = Pipeline::new(512 << 10);
        let head = b"set a 0 0 400000\r\n";
        let mut input = BytesMut::from(&head[..]);
        input.extend_from_slice(&[b'x'; 30_000]);
        assert_eq!(a.run(&mut input, &ctx, &mut out, usize::MAX), Batch::default());
        let total = head.len() + 400_002;
        assert_eq!(store.memory_used() - base, total as u64, "reserved while it arrives");
        assert!(input.capacity() >= total, "sized once for the whole request");
        assert!(!a.idle());
        // Together uploads may reserve half of -m: a third one of this size is refused.
        let mut b = Pipeline::new(512 << 10);
        let mut ib = BytesMut::from(&b"set b 0 0 400000\r\n"[..]);
        ib.extend_from_slice(&[b'y'; 20_000]);
        b.run(&mut ib, &ctx, &mut out, usize::MAX);
        let mut c = Pipeline::new(512 << 10);
        let mut ic = BytesMut::from(&b"set c 0 0 400000\r\n"[..]);
        ic.extend_from_slice(&[b'z'; 20_000]);
        c.run(&mut ic, &ctx, &mut out, usize::MAX);
        assert_eq!(&out[..], reply::OUT_OF_MEMORY_STORE);
        assert!(ic.is_empty());
        // The rest of its value is swallowed, and the next command is served.
        let mut rest = BytesMut::from(&[b'z'; 380_000][..]);
        rest.extend_from_slice(b"\r\nmn\r\n");
        out.clear();
        c.run(&mut rest, &ctx, &mut out, usize::MAX);
        assert_eq!(&out[..], b"MN\r\n");
        assert!(c.idle());
        // a completes: stored, its reservation given back; b's connection closes (dropped).
        input.extend_from_slice(&[b'x'; 370_000]);
        input.extend_from_slice(b"\r\n");
        out.clear();
        a.run(&mut input, &ctx, &mut out, usize::MAX);
        assert_eq!(&out[..], b"STORED\r\n");
        drop(b);
        assert!(a.idle());
        let item = store.memory_used() - base;
        assert!(item < 500_000, "only the stored item is charged now ({item} bytes)");
        assert_eq!(store.get(b"a").map(|i| i.value.len()), Some(400_000));
    }

    /// The first byte picks the protocol for the life of the pipeline (the connection).
    #[test]
    fn the_first_byte_picks_the_protocol() {
        let ctx = ctx();
        let noop = [0x80, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut p = Pipeline::new(1024 * 1024);
        let (sent, _, _) = drain(&mut p, &noop, &ctx, 4096);
        assert_eq!(&sent[..2], [0x81, 0x0a]);
        assert_eq!(&sent[12..16], [0, 0, 0, 9], "opaque echoed");
        // Text after binary is a bad magic: the connection closes without an answer.
        let mut input = BytesMut::from(&b"get some key here, long enough\r\n"[..]);
        let batch = p.run(&mut input, &ctx, &mut BytesMut::new(), 4096);
        assert!(batch.close);
        // A text connection stays text: a binary header on it is unknown command lines (its opcode
        // byte, 0x0a, ends the first).
        let mut t = Pipeline::new(1024 * 1024);
        let (sent, _, _) = drain(&mut t, b"mn\r\n", &ctx, 4096);
        assert_eq!(sent, b"MN\r\n");
        let mut input = BytesMut::from(&noop[..]);
        input.extend_from_slice(b"\r\n");
        let mut out = BytesMut::new();
        t.run(&mut input, &ctx, &mut out, 4096);
        assert_eq!(&out[..], b"ERROR\r\nERROR\r\n");
    }
}
