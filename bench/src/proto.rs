//! Memcached text protocol pieces the load generator needs: request building, the UDP frame header and
//! reassembly, reply classification, and a TCP reply framer that finds where each reply ends.

use std::io::Write;

use kv_common::FrameHeader;

use crate::keys::KeySpace;

/// UDP frame header length: request id, sequence number, datagram count, reserved (all big-endian u16).
pub const UDP_HDR: usize = kv_common::UDP_FRAME_HEADER_LEN;

/// How a completed request is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A get reply with at least one `VALUE`.
    Hit,
    /// A get reply that is just `END\r\n`.
    Miss,
    /// A reply starting with `SERVER_ERROR`, `CLIENT_ERROR` or `ERROR`.
    Error,
    /// A storage reply (`STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`).
    Stored,
    /// Anything else (e.g. a reflector echoing the request).
    Other,
}

pub fn is_error_reply(payload: &[u8]) -> bool {
    payload.starts_with(b"SERVER_ERROR") || payload.starts_with(b"CLIENT_ERROR") || payload.starts_with(b"ERROR")
}

/// Deterministic value bytes: a repeating `a..z` pattern.
pub fn value_byte(i: usize) -> u8 {
    b'a' + (i % 26) as u8
}

pub fn write_key(out: &mut Vec<u8>, rank: u64) {
    out.extend_from_slice(b"key:");
    write!(out, "{rank}").expect("write to Vec");
}

/// `get key:a key:b ...\r\n`
pub fn build_get(out: &mut Vec<u8>, ranks: &[u64]) {
    out.extend_from_slice(b"get");
    for &r in ranks {
        out.push(b' ');
        write_key(out, r);
    }
    out.extend_from_slice(b"\r\n");
}

/// `set key:n 0 0 <len>\r\n<value>\r\n` (a plain set: the reply is counted).
pub fn build_set(out: &mut Vec<u8>, rank: u64, value: &[u8]) {
    out.extend_from_slice(b"set ");
    write_key(out, rank);
    write_set_tail(out, value);
}

/// `get <key a> <key b> ...\r\n` with the keys of `ks`.
pub fn build_get_in(out: &mut Vec<u8>, ks: &KeySpace, ranks: &[u64]) {
    out.extend_from_slice(b"get");
    for &r in ranks {
        out.push(b' ');
        ks.write_key(out, r);
    }
    out.extend_from_slice(b"\r\n");
}

/// `set <key> 0 0 <len>\r\n<value>\r\n` with the key of `ks`.
pub fn build_set_in(out: &mut Vec<u8>, ks: &KeySpace, rank: u64, value: &[u8]) {
    out.extend_from_slice(b"set ");
    ks.write_key(out, rank);
    write_set_tail(out, value);
}

fn write_set_tail(out: &mut Vec<u8>, value: &[u8]) {
    write!(out, " 0 0 {}\r\n", value.len()).expect("write to Vec");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Bytes of `set <key> 0 0 <len>\r\n<value>\r\n` for a key of `key_len` and a value of `value_len` bytes.
pub fn set_len(key_len: usize, value_len: usize) -> usize {
    b"set ".len() + key_len + b" 0 0 ".len() + value_len.to_string().len() + 2 + value_len + 2
}

/// Bytes of a `get` of keys of `key_len` bytes each, `nkeys` of them.
pub fn get_len(key_len: usize, nkeys: usize) -> usize {
    3 + nkeys * (1 + key_len) + 2
}

pub fn write_udp_header(out: &mut Vec<u8>, id: u16) {
    out.extend_from_slice(&FrameHeader { request_id: id, seq: 0, total: 1, reserved: 0 }.to_bytes());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    pub id: u16,
    pub seq: u16,
    pub total: u16,
}

pub fn parse_udp_header(dgram: &[u8]) -> Option<UdpHeader> {
    let h = FrameHeader::parse(dgram)?;
    Some(UdpHeader { id: h.request_id, seq: h.seq, total: h.total })
}

/// Classify a UDP reply by its first datagram's payload (nothing else is validated, so an echo reflector counts as
/// `Other` for gets).
pub fn classify_udp(first_payload: &[u8], is_get: bool) -> Outcome {
    if is_error_reply(first_payload) {
        Outcome::Error
    } else if !is_get {
        Outcome::Stored
    } else if first_payload == b"END\r\n" {
        Outcome::Miss
    } else if contains(first_payload, b"VALUE") {
        Outcome::Hit
    } else {
        Outcome::Other
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Reassembly state of one outstanding UDP request.
///
/// Complete once `total` distinct datagrams (by sequence number) arrived, and, for a get reply that carries values,
/// once a datagram ending in `END\r\n` (or an error line) arrived. The second rule is for memcached 1.6, which
/// answers a multi-key get with one message per key, each with its own `seq 0 .. total` numbering under the same
/// request id, and the `END\r\n` in the last one; without it the request would complete at the first key.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reassembly {
    total: u16,
    got: u16,
    /// Seen sequence numbers below 128 (duplicates do not count toward `total`); higher ones are just counted.
    seen: u128,
    ended: bool,
    pub outcome: Option<Outcome>,
}

impl Reassembly {
    pub fn reset(&mut self) {
        *self = Reassembly::default();
    }

    /// Feed one datagram of this request; returns true when the reply is complete. `truncated`: the payload was
    /// cut short by the receive buffer (its end cannot be checked, so it is taken as the end).
    pub fn on_datagram(&mut self, hdr: UdpHeader, payload: &[u8], is_get: bool, truncated: bool) -> bool {
        let total = hdr.total.max(1);
        if self.total == 0 {
            self.total = total;
        }
        let bit = if hdr.seq < 128 { 1u128 << hdr.seq } else { 0 };
        if bit == 0 || self.seen & bit == 0 {
            self.seen |= bit;
            self.got = self.got.saturating_add(1);
        }
        if hdr.seq == 0 && self.outcome.is_none() {
            self.outcome = Some(classify_udp(payload, is_get));
        }
        if truncated || payload.ends_with(b"END\r\n") || is_error_reply(payload) || ends_with_error_line(payload) {
            self.ended = true;
        }
        self.got >= self.total && (self.outcome != Some(Outcome::Hit) || self.ended)
    }
}

/// The last line of `payload` is an error reply (memcached may end a get with one).
fn ends_with_error_line(payload: &[u8]) -> bool {
    let Some(body) = payload.strip_suffix(b"\r\n") else { return false };
    let start = body.windows(2).rposition(|w| w == b"\r\n").map_or(0, |p| p + 2);
    is_error_reply(&body[start..])
}

/// Find the end of the first complete reply in `buf`.
///
/// `Ok(None)`: more bytes are needed. `Ok(Some((len, outcome)))`: the first reply is `buf[..len]`. `Err`: the
/// stream cannot be framed (a `VALUE` line without a byte count).
pub fn parse_tcp_reply(buf: &[u8]) -> Result<Option<(usize, Outcome)>, String> {
    let Some(first_end) = line_end(buf, 0) else { return Ok(None) };
    let line = &buf[..first_end - 2];
    if line.starts_with(b"VALUE ") {
        let mut pos = 0;
        loop {
            let Some(end) = line_end(buf, pos) else { return Ok(None) };
            let line = &buf[pos..end - 2];
            if line.starts_with(b"VALUE ") {
                let bytes = value_len(line)?;
                let data_end = end + bytes + 2;
                if buf.len() < data_end {
                    return Ok(None);
                }
                pos = data_end;
            } else if line == b"END" {
                return Ok(Some((end, Outcome::Hit)));
            } else if is_error_reply(line) {
                return Ok(Some((end, Outcome::Error)));
            } else {
                return Ok(Some((end, Outcome::Other)));
            }
        }
    }
    let outcome = if line == b"END" {
        Outcome::Miss
    } else if is_error_reply(line) {
        Outcome::Error
    } else if matches!(line, b"STORED" | b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND") {
        Outcome::Stored
    } else {
        Outcome::Other
    };
    Ok(Some((first_end, outcome)))
}

/// Index just past the next `\r\n` at or after `from`.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        match buf[i..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                let nl = i + p;
                if nl > from && buf[nl - 1] == b'\r' {
                    return Some(nl + 1);
                }
                i = nl + 1;
            }
            None => return None,
        }
    }
    None
}

/// The `<bytes>` field of `VALUE <key> <flags> <bytes> [<cas>]`.
fn value_len(line: &[u8]) -> Result<usize, String> {
    let mut it = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
    let field = it.nth(3).ok_or_else(|| format!("bad VALUE line: {:?}", String::from_utf8_lossy(line)))?;
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad VALUE length: {:?}", String::from_utf8_lossy(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(id: u16, seq: u16, total: u16) -> UdpHeader {
        UdpHeader { id, seq, total }
    }

    #[test]
    fn requests_are_well_formed() {
        let mut b = Vec::new();
        write_udp_header(&mut b, 0x1234);
        build_get(&mut b, &[3, 17]);
        assert_eq!(&b[..8], &[0x12, 0x34, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&b[8..], b"get key:3 key:17\r\n");
        let mut s = Vec::new();
        build_set(&mut s, 5, b"abc");
        assert_eq!(s, b"set key:5 0 0 3\r\nabc\r\n");
        assert_eq!(s.len(), set_len(5, 3));
        let ks = KeySpace::fixed(100, 3);
        let (mut g2, mut s2) = (Vec::new(), Vec::new());
        build_get_in(&mut g2, &ks, &[3, 17]);
        build_set_in(&mut s2, &ks, 5, b"abc");
        assert_eq!((&g2[..], &s2[..]), (&b[8..], &s[..]));
        assert_eq!(get_len(5, 1), b"get key:5\r\n".len());
        assert_eq!(value_byte(0), b'a');
        assert_eq!(value_byte(27), b'b');
    }

    #[test]
    fn udp_header_parse() {
        assert_eq!(parse_udp_header(&[0, 7, 0, 2, 0, 3, 0, 0, b'x']), Some(hdr(7, 2, 3)));
        assert_eq!(parse_udp_header(&[0, 7, 0, 2, 0, 3, 0]), None);
    }

    #[test]
    fn udp_single_datagram_classification() {
        let mut r = Reassembly::default();
        assert!(r.on_datagram(hdr(1, 0, 1), b"VALUE key:1 0 3\r\nabc\r\nEND\r\n", true, false));
        assert_eq!(r.outcome, Some(Outcome::Hit));
        r.reset();
        assert!(r.on_datagram(hdr(1, 0, 1), b"END\r\n", true, false));
        assert_eq!(r.outcome, Some(Outcome::Miss));
        r.reset();
        // A reflector echoes the request: complete, counted as other.
        assert!(r.on_datagram(hdr(1, 0, 1), b"get key:1\r\n", true, false));
        assert_eq!(r.outcome, Some(Outcome::Other));
        r.reset();
        assert!(r.on_datagram(hdr(1, 0, 1), b"STORED\r\n", false, false));
        assert_eq!(r.outcome, Some(Outcome::Stored));
        r.reset();
        assert!(r.on_datagram(hdr(1, 0, 1), b"SERVER_ERROR out of memory\r\n", false, false));
        assert_eq!(r.outcome, Some(Outcome::Error));
        r.reset();
        assert!(r.on_datagram(hdr(1, 0, 0), b"ERROR\r\n", true, false), "total 0 is treated as 1");
        assert_eq!(r.outcome, Some(Outcome::Error));
    }

    #[test]
    fn udp_multi_datagram_reassembly_any_order_ignores_duplicates() {
        let mut r = Reassembly::default();
        assert!(!r.on_datagram(hdr(9, 2, 3), b"tail\r\nEND\r\n", true, false));
        assert!(!r.on_datagram(hdr(9, 2, 3), b"tail\r\nEND\r\n", true, false), "duplicate does not count");
        assert!(!r.on_datagram(hdr(9, 0, 3), b"VALUE key:1 0 3000\r\nxxxx", true, false));
        assert!(r.on_datagram(hdr(9, 1, 3), b"xxxx", true, false));
        assert_eq!(r.outcome, Some(Outcome::Hit));
    }

    #[test]
    fn udp_memcached16_multiget_one_message_per_key() {
        // memcached 1.6: "get big key:1" answers with a 3-datagram message for `big`, then a 1-datagram message
        // (seq 0 of 1 again) holding key:1 and the END.
        let mut r = Reassembly::default();
        assert!(!r.on_datagram(hdr(5, 0, 3), b"VALUE big 0 3000\r\nxxxx", true, false));
        assert!(!r.on_datagram(hdr(5, 1, 3), b"xxxx", true, false));
        assert!(!r.on_datagram(hdr(5, 2, 3), b"xxxx\r\n", true, false), "all 3 arrived, but no END yet");
        assert!(r.on_datagram(hdr(5, 0, 1), b"VALUE key:1 0 2\r\nab\r\nEND\r\n", true, false));
        assert_eq!(r.outcome, Some(Outcome::Hit));
        // Ten single-datagram messages, one per key; only the last ends with END.
        r.reset();
        for k in 0..9 {
            assert!(!r.on_datagram(hdr(6, 0, 1), format!("VALUE key:{k} 0 1\r\nx\r\n").as_bytes(), true, false));
        }
        assert!(r.on_datagram(hdr(6, 0, 1), b"VALUE key:9 0 1\r\nx\r\nEND\r\n", true, false));
        // A get that ends in an error line, and a truncated datagram, also end the reply.
        r.reset();
        assert!(r.on_datagram(hdr(7, 0, 1), b"VALUE k 0 1\r\nx\r\nSERVER_ERROR oops\r\n", true, false));
        r.reset();
        assert!(r.on_datagram(hdr(8, 0, 1), b"VALUE k 0 5000\r\nxxx", true, true));
    }

    #[test]
    fn tcp_framing_single_replies() {
        assert_eq!(parse_tcp_reply(b"END\r\n"), Ok(Some((5, Outcome::Miss))));
        assert_eq!(parse_tcp_reply(b"STORED\r\nEND\r\n"), Ok(Some((8, Outcome::Stored))));
        assert_eq!(parse_tcp_reply(b"NOT_STORED\r\n"), Ok(Some((12, Outcome::Stored))));
        assert_eq!(parse_tcp_reply(b"ERROR\r\n"), Ok(Some((7, Outcome::Error))));
        assert_eq!(parse_tcp_reply(b"CLIENT_ERROR bad data chunk\r\n"), Ok(Some((29, Outcome::Error))));
        assert_eq!(parse_tcp_reply(b"SERVER_ERROR x\r\n"), Ok(Some((16, Outcome::Error))));
        assert_eq!(parse_tcp_reply(b"WHATEVER\r\n"), Ok(Some((10, Outcome::Other))));
        assert_eq!(parse_tcp_reply(b"STORED\r"), Ok(None));
        assert_eq!(parse_tcp_reply(b""), Ok(None));
    }

    #[test]
    fn tcp_framing_values_with_crlf_inside_data() {
        // The data contains "\r\nEND\r\n": only the byte count finds the real end.
        let reply = b"VALUE key:1 0 7\r\n\r\nEND\r\n\r\nVALUE key:2 5 2 99\r\nok\r\nEND\r\nSTORED\r\n";
        let want = reply.len() - b"STORED\r\n".len();
        assert_eq!(parse_tcp_reply(reply), Ok(Some((want, Outcome::Hit))));
        // Every strict prefix of the get reply is incomplete.
        for cut in 0..want {
            assert_eq!(parse_tcp_reply(&reply[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn tcp_framing_error_inside_multiget_and_garbage() {
        let r = b"VALUE key:1 0 1\r\nx\r\nSERVER_ERROR oops\r\n";
        assert_eq!(parse_tcp_reply(r), Ok(Some((r.len(), Outcome::Error))));
        assert!(parse_tcp_reply(b"VALUE key:1 0\r\n").is_err());
        assert!(parse_tcp_reply(b"VALUE key:1 0 zz\r\n").is_err());
    }

    #[test]
    fn bare_lf_is_not_a_line_end() {
        assert_eq!(parse_tcp_reply(b"END\n"), Ok(None));
        assert_eq!(parse_tcp_reply(b"EN\nD\r\n"), Ok(Some((6, Outcome::Other))));
    }
}
