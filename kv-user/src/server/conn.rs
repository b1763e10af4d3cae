//! The request pipeline shared by TCP and UDP: parse every complete request in the input buffer,
//! execute it, and append the replies to one output buffer so a batch goes out in one write.

use bytes::{Buf as _, BytesMut};

use crate::exec::{self, Ctx};
use crate::protocol::{self, reply, Limits, Parsed};

/// Per-connection parsing state.
pub struct Pipeline {
    limits: Limits,
    /// Bytes of a refused data block still to discard (memcached "swallows" a too-large value
    /// instead of buffering it).
    swallow: usize,
    /// Where the multiget at the front of the input resumes (byte offset into its keys): its reply is
    /// sent in pieces of about the soft limit.
    resume: usize,
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
        Self { limits: Limits { item_size_max }, swallow: 0, resume: 0 }
    }

    /// Runs every complete request at the front of `input`, leaving an incomplete tail in place.
    pub fn run(&mut self, input: &mut BytesMut, ctx: &Ctx, out: &mut BytesMut, out_soft_limit: usize) -> Batch {
        let mut batch = Batch::default();
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
            let consumed = match protocol::parse(input, &self.limits) {
                Parsed::Incomplete => return batch,
                Parsed::Command { cmd, consumed } => {
                    let start = out.len();
                    let stop_at = out_soft_limit.min(UNSPLIT_REPLY_MAX);
                    let (o, resume) = exec::execute_from(&cmd, self.resume, ctx, out, stop_at);
                    batch.seq = batch.seq.max(o.seq);
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
                            consumed
                        }
                    }
                }
                Parsed::Error { reply, consumed, swallow, close, too_large_key } => {
                    match too_large_key {
                        Some(key) => {
                            // An empty reply means the command had noreply.
                            let o = exec::reject_too_large_noreply(key, reply.is_empty(), ctx, out);
                            batch.seq = batch.seq.max(o.seq);
                        }
                        None => out.extend_from_slice(reply),
                    }
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
}
