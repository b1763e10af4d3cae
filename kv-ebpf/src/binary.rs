//! Binary-protocol `get`/`getk` over UDP: the one request a datagram carries, checked as strictly as the
//! user-space parser (`protocol::binary::parse`) would accept it, its key looked up as a text key is,
//! and its reply assembled in `Scratch::out`: header and flags from kv-common's formatter (the one user
//! space uses), the key for `getk`, and the value, which is the slot's text reply without its `VALUE`
//! line and trailing `\r\n`. The headers and the send are the text path's ([`crate::reply`]).
//!
//! Passed: other opcodes (quiet forms included: a quiet miss is silent, user space's to decide), extras,
//! a body other than the key, anything after the request (several requests), misses, and what would not
//! fit one datagram.

use kv_common::{
    get_hit_prefix, Counter, BIN_GET_PREFIX_LEN, BIN_HEADER_LEN, BIN_OP_GET, BIN_OP_GETK, BIN_REQUEST_MAGIC,
    MAX_KEY_LEN, XDP_REPLY_MAX,
};

use crate::{
    lookup::find_entry,
    reply::{copy, Reply, ENTRY_MASK},
    request::counter_from,
    scratch::{Scratch, OUT_MASK, REPLY_OFF},
};

/// Where the key starts in a slot's reply text: after `VALUE `.
const SLOT_KEY_OFF: usize = b"VALUE ".len();
/// What a slot's reply text adds around the value besides its `VALUE` line: `\r\n` twice.
const TEXT_CRLFS: usize = 4;
/// What [`bin_get`] sets, with the `Counter` in the low bits, to pass.
const BIN_ERR: u64 = 1 << 32;

/// Whether the request is binary: its first byte is the request magic (text commands never start so).
#[inline(always)]
pub fn is_binary(s: &Scratch) -> bool {
    s.req[0] == BIN_REQUEST_MAGIC
}

/// The reply to the binary request in `s.req` (`text_len` bytes), assembled in `s.out`, or the reason
/// to pass it.
#[inline(always)]
pub fn parse_binary(s: &mut Scratch, text_len: usize) -> Result<Reply, Counter> {
    let r = bin_get(s, text_len);
    if r & BIN_ERR != 0 {
        return Err(counter_from(r & !BIN_ERR));
    }
    Ok(Reply::Scratch { len: r as usize, keys: 1, binary: true })
}

/// [`try_bin_get`] as a subprogram returning a scalar (the reply's length, or [`BIN_ERR`] and the
/// counter), like `request::direct_get`: inlined, its temporaries would add to `kv_xdp`'s stack frame.
#[inline(never)]
fn bin_get(s: &mut Scratch, text_len: usize) -> u64 {
    match try_bin_get(s, text_len) {
        Ok(len) => len as u64,
        Err(c) => BIN_ERR | c as u64,
    }
}

/// Checks the request, looks its key up and assembles the reply; returns its length.
#[inline(always)]
fn try_bin_get(s: &mut Scratch, text_len: usize) -> Result<usize, Counter> {
    let r = &s.req;
    let opcode = r[1];
    if r[0] != BIN_REQUEST_MAGIC || (opcode != BIN_OP_GET && opcode != BIN_OP_GETK) {
        return Err(Counter::PassNotGet);
    }
    let key_len = u16::from_be_bytes([r[2], r[3]]) as usize;
    let body_len = u32::from_be_bytes([r[8], r[9], r[10], r[11]]) as usize;
    // The parser's rule for get/getk (no extras, a key, a body of the key alone), and nothing after
    // the request in the datagram. Data type, vbucket and CAS are not looked at, by user space either.
    if r[4] != 0 || key_len == 0 || key_len > MAX_KEY_LEN || body_len != key_len || text_len != BIN_HEADER_LEN + key_len
    {
        return Err(Counter::PassNotGet);
    }
    let opaque = u32::from_be_bytes([r[12], r[13], r[14], r[15]]);
    let hit = find_entry(s, BIN_HEADER_LEN, key_len)?;
    let slot = hit.slot()?;
    // The slot's text reply is `VALUE ...` (hdr bytes), \r\n, the value, \r\n. Shorter: torn.
    let (hdr, total) = (hit.hdr, hit.total);
    if total < hdr + TEXT_CRLFS {
        return Err(Counter::PassBusy);
    }
    let value_len = total - hdr - TEXT_CRLFS;
    let echo_key = if opcode == BIN_OP_GETK { key_len } else { 0 };
    // Larger: user space splits it over several datagrams. (`copy` also keeps room for a text reply's
    // `END`, so a response within those few bytes of the limit passes too: user space sends it whole.)
    if BIN_GET_PREFIX_LEN + echo_key + value_len > XDP_REPLY_MAX {
        return Err(Counter::PassTooBig);
    }
    let prefix = get_hit_prefix(opcode, opaque, slot.cas_unique(), slot.flags(), echo_key as u16, value_len as u32);
    s.out[REPLY_OFF..REPLY_OFF + BIN_GET_PREFIX_LEN].copy_from_slice(&prefix);
    // The key from the slot (equal to the request's once the seqlock holds), then the value.
    let out = copy(s, REPLY_OFF + BIN_GET_PREFIX_LEN, slot.buf().wrapping_add(SLOT_KEY_OFF), echo_key)?;
    let value = slot.buf().wrapping_add((hdr + b"\r\n".len()) & ENTRY_MASK);
    let out = copy(s, out, value, value_len)?;
    if !hit.unchanged() {
        return Err(Counter::PassBusy);
    }
    // Zeros to a whole 32-bit word, for an IPv6 reply's checksum (as `reply::finish` pads text).
    for i in 0..3 {
        s.out[(out + i) & OUT_MASK] = 0;
    }
    Ok(out - REPLY_OFF)
}
