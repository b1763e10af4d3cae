//! The request pipeline shared by TCP and UDP: parse every complete request in the input buffer,
//! execute it, and append the replies to one output buffer so a batch goes out in one write.

use bytes::{Buf as _, BytesMut};

use crate::exec::{self, Ctx};
use crate::protocol::{self, Limits, Parsed};

/// Per-connection parsing state.
pub struct Pipeline {
    limits: Limits,
    /// Bytes of a refused data block still to discard (memcached "swallows" a too-large value
    /// instead of buffering it).
    swallow: usize,
}

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
        Self { limits: Limits { item_size_max }, swallow: 0 }
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
                    let o = exec::execute(&cmd, ctx, out);
                    batch.seq = batch.seq.max(o.seq);
                    batch.close |= o.close;
                    consumed
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
