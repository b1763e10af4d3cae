//! The binary request parser: one request from the front of the connection's buffer. Never allocates,
//! never panics; the checks and their order are memcached's `dispatch_bin_command`.

use super::{op, BinCmd, BinRequest, Echo, Status, HEADER_LEN, REQUEST_MAGIC};
use crate::protocol::command::{ArithCmd, SetMode, StoreCmd, TouchCmd};
use crate::protocol::{item_size_ok, Limits, KEY_MAX_LENGTH};

/// memcached's `ITEM_SIZE_MAX_UPPER_LIMIT`: a larger body is refused before anything else.
const BODY_MAX: usize = 1 << 30;
/// An incr/decr expiration of all ones: do not create the item on a miss.
const NO_VIVIFY: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinParsed<'a> {
    /// A complete request occupying `buf[..consumed]`.
    Request { req: BinRequest<'a>, consumed: usize },
    /// Need more bytes.
    Incomplete,
    /// Need more bytes: a storage request `total` bytes long, its value still arriving.
    Partial { total: usize, echo: Echo },
    /// A refused request occupying `buf[..consumed]`: answer `status`, discard `swallow` more bytes
    /// (they may not have arrived yet), then close if `close`. `too_large_key`: a set refused as too
    /// large, whose old item must go (memcached's "avoid stale data").
    Error { echo: Echo, status: Status, consumed: usize, swallow: usize, close: bool, too_large_key: Option<&'a [u8]> },
    /// The first byte is not the request magic: memcached closes without an answer.
    BadMagic,
}

/// The header fields, host order.
struct Header {
    opcode: u8,
    keylen: usize,
    extlen: usize,
    bodylen: usize,
    opaque: u32,
    cas: u64,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The non-quiet opcode of a quiet one, and whether it was quiet.
fn unquiet(opcode: u8) -> (u8, bool) {
    let base = match opcode {
        op::GETQ => op::GET,
        op::GETKQ => op::GETK,
        op::SETQ => op::SET,
        op::ADDQ => op::ADD,
        op::REPLACEQ => op::REPLACE,
        op::DELETEQ => op::DELETE,
        op::INCREMENTQ => op::INCREMENT,
        op::DECREMENTQ => op::DECREMENT,
        op::QUITQ => op::QUIT,
        op::FLUSHQ => op::FLUSH,
        op::APPENDQ => op::APPEND,
        op::PREPENDQ => op::PREPEND,
        op::GATQ => op::GAT,
        op::GATKQ => op::GATK,
        other => return (other, false),
    };
    (base, true)
}

/// Parses one binary request from the front of `buf`.
pub fn parse<'a>(buf: &'a [u8], limits: &Limits) -> BinParsed<'a> {
    if buf.len() < HEADER_LEN {
        return BinParsed::Incomplete;
    }
    if buf[0] != REQUEST_MAGIC {
        return BinParsed::BadMagic;
    }
    let h = Header {
        opcode: buf[1],
        keylen: usize::from(u16::from_be_bytes([buf[2], buf[3]])),
        extlen: usize::from(buf[4]),
        bodylen: be32(&buf[8..]) as usize,
        opaque: be32(&buf[12..]),
        cas: be64(&buf[16..]),
    };
    let echo = Echo { opcode: h.opcode, opaque: h.opaque };
    let fail = |status, consumed, swallow, close| BinParsed::Error {
        echo,
        status,
        consumed,
        swallow,
        close,
        too_large_key: None,
    };
    // The header alone settles these (memcached checks them once key and extras are in).
    if h.keylen + h.extlen > h.bodylen {
        return fail(Status::UnknownCommand, HEADER_LEN, 0, true);
    }
    if h.bodylen > BODY_MAX || h.keylen > KEY_MAX_LENGTH {
        return fail(Status::InvalidArguments, HEADER_LEN, 0, true);
    }
    let head = HEADER_LEN + h.extlen + h.keylen;
    // The connection closes after it: only the header need have arrived.
    let protocol_error = fail(Status::InvalidArguments, HEADER_LEN, 0, true);
    let (base, quiet) = unquiet(h.opcode);
    let (k, e) = (h.keylen, h.extlen);
    let valid = match base {
        op::VERSION | op::NOOP | op::QUIT | op::SASL_LIST_MECHS => e == 0 && k == 0 && h.bodylen == 0,
        op::FLUSH => k == 0 && h.bodylen == e && (e == 0 || e == 4),
        op::SET | op::ADD | op::REPLACE => e == 8 && k != 0,
        op::GET | op::GETK => e == 0 && k > 0 && h.bodylen == k,
        op::DELETE => k > 0 && e == 0 && h.bodylen == k,
        op::INCREMENT | op::DECREMENT => k > 0 && e == 20 && h.bodylen == k + e,
        op::APPEND | op::PREPEND | op::SASL_AUTH | op::SASL_STEP => k > 0 && e == 0,
        op::STAT => e == 0,
        op::TOUCH | op::GAT | op::GATK => e == 4 && k != 0,
        // Unknown: answered once key and extras are in, the rest of the body discarded.
        _ => true,
    };
    if !valid {
        return protocol_error;
    }
    if buf.len() < head {
        return BinParsed::Incomplete;
    }
    let ext = &buf[HEADER_LEN..HEADER_LEN + e];
    let key = &buf[HEADER_LEN + e..head];
    let vlen = h.bodylen - e - k;
    let request = |cmd, consumed| BinParsed::Request { req: BinRequest { echo, quiet, cmd }, consumed };
    let exptime = |at: usize| i64::from(be32(&ext[at..]));
    match base {
        op::SET | op::ADD | op::REPLACE | op::APPEND | op::PREPEND => {
            let (flags, exptime) = if e == 8 { (be32(ext), exptime(4)) } else { (0, 0) };
            if !item_size_ok(k, flags, vlen, limits) {
                let too_large_key = (base == op::SET).then_some(key);
                return BinParsed::Error {
                    echo,
                    status: Status::TooLarge,
                    consumed: head,
                    swallow: vlen,
                    close: false,
                    too_large_key,
                };
            }
            let total = HEADER_LEN + h.bodylen;
            if buf.len() < total {
                return BinParsed::Partial { total, echo };
            }
            let mode = match base {
                op::APPEND => SetMode::Append,
                op::PREPEND => SetMode::Prepend,
                _ if h.cas != 0 => SetMode::Cas,
                op::ADD => SetMode::Add,
                op::REPLACE => SetMode::Replace,
                _ => SetMode::Set,
            };
            let data = &buf[head..total];
            let cmd = StoreCmd { mode, key, flags, exptime, cas_unique: h.cas, data, noreply: quiet };
            request(BinCmd::Store { cmd, base }, total)
        }
        op::GET | op::GETK => request(BinCmd::Get { key, with_key: base == op::GETK, touch: None }, head),
        op::GAT | op::GATK => request(BinCmd::Get { key, with_key: base == op::GATK, touch: Some(exptime(0)) }, head),
        op::TOUCH => request(BinCmd::Touch(TouchCmd { key, exptime: exptime(0), noreply: false }), head),
        op::DELETE => request(BinCmd::Delete { key, cas: h.cas }, head),
        op::INCREMENT | op::DECREMENT => {
            let expiration = be32(&ext[16..]);
            let vivify = (expiration != NO_VIVIFY).then(|| (i64::from(expiration), be64(&ext[8..])));
            let cmd = ArithCmd { key, incr: base == op::INCREMENT, delta: be64(ext), noreply: quiet };
            request(BinCmd::Arith { cmd, cas: h.cas, vivify }, head)
        }
        op::FLUSH => request(BinCmd::Flush { delay: if e == 4 { exptime(0) } else { 0 } }, head),
        op::NOOP => request(BinCmd::Noop, head),
        op::VERSION => request(BinCmd::Version, head),
        op::QUIT => request(BinCmd::Quit, head),
        op::STAT => request(BinCmd::Stat { key }, head),
        // No SASL here: memcached built without it answers its opcodes as unknown.
        _ => fail(Status::UnknownCommand, head, vlen, false),
    }
}
