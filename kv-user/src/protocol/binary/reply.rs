//! Binary response formatting: the 24-byte header and memcached's error texts.

use bytes::BytesMut;

use super::{Echo, Status, RESPONSE_MAGIC};

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
    let mut h = [0u8; super::HEADER_LEN];
    h[0] = RESPONSE_MAGIC;
    h[1] = echo.opcode;
    h[2..4].copy_from_slice(&body.keylen.to_be_bytes());
    h[4] = body.extlen;
    // h[5]: datatype, raw bytes (0).
    h[6..8].copy_from_slice(&(status as u16).to_be_bytes());
    h[8..12].copy_from_slice(&body.len.to_be_bytes());
    h[12..16].copy_from_slice(&echo.opaque.to_be_bytes());
    h[16..24].copy_from_slice(&cas.to_be_bytes());
    out.extend_from_slice(&h);
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
