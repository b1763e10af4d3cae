//! Binary response formatting: the 24-byte header (kv-common's [`BinHeader`], which the XDP program's
//! `get` hits use too) and memcached's error texts.

use bytes::BytesMut;
use kv_common::BinHeader;

use super::{Echo, Status};

/// The lengths of a response's parts after its header.
#[derive(Debug, Clone, Copy, Default)]
pub struct Body {
    pub extlen: u8,
    pub keylen: u16,
    /// Extras + key + value.
    pub len: u32,
}

/// Appends a response header.
pub fn header(out: &mut BytesMut, echo: Echo, status: Status, cas: u64, body: Body) {
    let h = BinHeader {
        opcode: echo.opcode,
        keylen: body.keylen,
        extlen: body.extlen,
        status: status as u16,
        body_len: body.len,
        opaque: echo.opaque,
        cas,
    };
    out.extend_from_slice(&h.to_bytes());
}

/// Appends the response to a `get`/`getk` hit: header and flags (kv-common's formatter, which the XDP
/// program uses for the same reply), the key if `key` is given, the value.
pub fn get_hit(out: &mut BytesMut, echo: Echo, cas: u64, flags: u32, key: Option<&[u8]>, value: &[u8]) {
    let key = key.unwrap_or_default();
    let prefix = kv_common::get_hit_prefix(echo.opcode, echo.opaque, cas, flags, key.len() as u16, value.len() as u32);
    out.extend_from_slice(&prefix);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// A success without a body.
pub fn ok(out: &mut BytesMut, echo: Echo, cas: u64) {
    header(out, echo, Status::Success, cas, Body::default());
}

/// memcached's `write_bin_error` text for a status.
pub fn error_text(status: Status) -> &'static [u8] {
    match status {
        Status::Success => b"",
        Status::KeyNotFound => b"Not found",
        Status::KeyExists => b"Data exists for key.",
        Status::TooLarge => b"Too large.",
        Status::InvalidArguments => b"Invalid arguments",
        Status::NotStored => b"Not stored.",
        Status::NonNumeric => b"Non-numeric server-side value for incr or decr",
        Status::UnknownCommand => b"Unknown command",
        Status::OutOfMemory => b"Out of memory",
    }
}

/// An error response: the status and its text as the body.
pub fn error(out: &mut BytesMut, echo: Echo, status: Status) {
    error_with(out, echo, status, error_text(status));
}

/// An error response with its own text (a log failure's cause).
pub fn error_with(out: &mut BytesMut, echo: Echo, status: Status, text: &[u8]) {
    header(out, echo, status, 0, Body { len: text.len() as u32, ..Body::default() });
    out.extend_from_slice(text);
}
