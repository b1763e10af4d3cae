//! The on-disk encoding of the log: pure functions, no I/O. See the layout in the parent module's docs.
//!
//! Version 2 (written) ends every record with the wall-clock time it was logged; version 1 (read only, upgraded
//! at start-up) has no stamp. Everything else is the same in both.

use std::fmt;

use crate::record::Record;

/// Identifies a kv log file; the trailing bytes catch text-mode/line-ending mangling.
pub const MAGIC: [u8; 8] = *b"KVLOG\0\r\n";
/// The version this build writes. Bumped on any incompatible change of the layout below.
pub const FORMAT_VERSION: u32 = 2;
/// `magic[8] | version u32 | crc32(magic, version) u32`.
pub const FILE_HEADER_LEN: usize = 16;
/// `len u32 | crc u32 | type u8`, then `len` bytes of body (and, from version 2, the stamp).
pub const RECORD_HEADER_LEN: usize = 9;
/// Version 2's trailer: unix time in nanoseconds when the record was logged (0: unknown, upgraded from version 1).
pub const STAMP_LEN: usize = 8;
/// Longest key a record may carry (memcached's limit, from the wire contract).
pub use kv_common::MAX_KEY_LEN;
/// The largest value the server can be configured to accept (`-I 1g`); anything longer is corruption.
pub const MAX_VALUE_LEN: usize = 1 << 30;
/// Fixed part of a Set body: klen u8, flags u32, exptime u64, cas u64, time u64.
const SET_FIXED: usize = 1 + 4 + 8 + 8 + 8;
/// Largest body any valid record has; a longer `len` field is rejected before allocating anything.
pub const MAX_BODY_LEN: usize = SET_FIXED + MAX_KEY_LEN + MAX_VALUE_LEN;

const T_SET: u8 = 1;
const T_TOUCH: u8 = 2;
const T_DELETE: u8 = 3;
const T_FLUSH_ALL: u8 = 4;

/// A log format this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// No stamps. Read, never written: start-up rewrites such a log as [`Version::V2`].
    V1 = 1,
    /// Every record ends with its stamp.
    V2 = 2,
}

impl Version {
    /// What this build writes.
    pub const CURRENT: Version = Version::V2;

    pub fn number(self) -> u32 {
        self as u32
    }

    fn from_number(v: u32) -> Option<Version> {
        match v {
            1 => Some(Version::V1),
            2 => Some(Version::V2),
            _ => None,
        }
    }

    /// Bytes after the body.
    fn trailer(self) -> usize {
        match self {
            Version::V1 => 0,
            Version::V2 => STAMP_LEN,
        }
    }
}

/// The file header for `v` (a log this build writes starts with `file_header(Version::CURRENT)`).
pub fn file_header(v: Version) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&v.number().to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a file does not start with a header this build reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// Shorter than a header and a prefix of one: a crash while the log was being created.
    Torn,
    /// Not a kv log file at all.
    BadMagic,
    /// A kv log of a version this build does not read (a newer server wrote it).
    Unsupported(u32),
    BadChecksum,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Torn => f.write_str("torn file header"),
            HeaderError::BadMagic => f.write_str("not a kv log file (bad magic)"),
            HeaderError::Unsupported(v) => write!(
                f,
                "log format version {v}; this build reads versions {} to {FORMAT_VERSION}",
                Version::V1.number()
            ),
            HeaderError::BadChecksum => f.write_str("file header checksum mismatch"),
        }
    }
}

impl std::error::Error for HeaderError {}

/// Reads the file header at the start of `buf` (which may hold more).
pub fn parse_header(buf: &[u8]) -> Result<Version, HeaderError> {
    let h = &buf[..buf.len().min(FILE_HEADER_LEN)];
    if h.len() < FILE_HEADER_LEN {
        let prefix_of = |v: Version| file_header(v).starts_with(h);
        return Err(if prefix_of(Version::V1) || prefix_of(Version::V2) {
            HeaderError::Torn
        } else {
            HeaderError::BadMagic
        });
    }
    if h[..8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let n = u32_at(h, 8);
    if u32_at(h, 12) != crc32fast::hash(&h[..12]) {
        return Err(HeaderError::BadChecksum);
    }
    Version::from_number(n).ok_or(HeaderError::Unsupported(n))
}

/// A record as the log holds it: the mutation and when it was logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub rec: Record<'a>,
    /// Unix time in nanoseconds when the record was logged; 0 for records from a version 1 log. Never
    /// decreases along a log written by this build (the writer holds it at the last one if the clock steps back).
    pub stamp_ns: u64,
}

/// A record the format cannot represent (the store handed over something outside memcached's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    KeyTooLong(usize),
    ValueTooLarge(usize),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::KeyTooLong(n) => write!(f, "key of {n} bytes exceeds {MAX_KEY_LEN}"),
            EncodeError::ValueTooLarge(n) => {
                write!(f, "value of {n} bytes exceeds {MAX_VALUE_LEN}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

fn check_key(key: &[u8]) -> Result<(), EncodeError> {
    if key.len() > MAX_KEY_LEN {
        return Err(EncodeError::KeyTooLong(key.len()));
    }
    Ok(())
}

/// Appends one framed record, stamped `stamp_ns`, to `out`. On error `out` is left unchanged, so the decoder
/// never sees anything it would reject.
pub fn encode(rec: &Record<'_>, stamp_ns: u64, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    encode_unstamped(rec, out)?.stamp(out, stamp_ns);
    Ok(())
}

/// A record appended to a buffer but for its stamp (and so its CRC): see [`encode_unstamped`].
#[must_use = "the record is incomplete until stamped"]
pub struct Unstamped {
    start: usize,
    /// Over everything before the stamp; the stamp goes in last.
    crc: crc32fast::Hasher,
}

impl Unstamped {
    /// Appends the stamp to `out` (the buffer the record was encoded into, unchanged since) and fills in the CRC.
    pub fn stamp(mut self, out: &mut Vec<u8>, stamp_ns: u64) {
        let ns = stamp_ns.to_le_bytes();
        out.extend_from_slice(&ns);
        self.crc.update(&ns);
        let crc = self.crc.finalize().to_le_bytes();
        out[self.start + 4..self.start + 8].copy_from_slice(&crc);
        debug_assert_eq!(frame_len(Version::CURRENT, &out[self.start..]), Some(out.len() - self.start));
    }
}

/// Appends a record to `out` without its stamp, hashing it on the way: the writer encodes outside its lock and
/// stamps inside it (an 8-byte CRC update), so stamps follow the log's order. On error `out` is unchanged.
pub fn encode_unstamped(rec: &Record<'_>, out: &mut Vec<u8>) -> Result<Unstamped, EncodeError> {
    let (ty, body_len) = match rec {
        Record::Set { key, value, .. } => {
            check_key(key)?;
            if value.len() > MAX_VALUE_LEN {
                return Err(EncodeError::ValueTooLarge(value.len()));
            }
            (T_SET, SET_FIXED + key.len() + value.len())
        }
        Record::Touch { key, .. } => {
            check_key(key)?;
            (T_TOUCH, 1 + key.len() + 16)
        }
        Record::Delete { key } => {
            check_key(key)?;
            (T_DELETE, 1 + key.len())
        }
        Record::FlushAll { .. } => (T_FLUSH_ALL, 16),
    };
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + body_len + STAMP_LEN);
    // Bounded by MAX_BODY_LEN < u32::MAX, checked above.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in by stamp()
    out.push(ty);
    match *rec {
        Record::Set { key, flags, exptime, cas, time, value } => {
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&exptime.to_le_bytes());
            out.extend_from_slice(&cas.to_le_bytes());
            out.extend_from_slice(&time.to_le_bytes());
            out.extend_from_slice(value);
        }
        Record::Touch { key, exptime, cas } => {
            out.push(key.len() as u8);
            out.extend_from_slice(key);
            out.extend_from_slice(&exptime.to_le_bytes());
            out.extend_from_slice(&cas.to_le_bytes());
        }
        Record::Delete { key } => {
            out.push(key.len() as u8);
            out.extend_from_slice(key);
        }
        Record::FlushAll { at, max_cas } => {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&max_cas.to_le_bytes());
        }
    }
    debug_assert_eq!(out.len() - start, RECORD_HEADER_LEN + body_len);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 4]);
    crc.update(&out[start + 8..]);
    Ok(Unstamped { start, crc })
}

/// CRC over every byte of the frame but the CRC field itself: length, type, body (and stamp, in version 2).
fn record_crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..4]);
    h.update(&frame[8..]);
    h.finalize()
}

/// The result of decoding the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and the number of bytes it occupies.
    Ok(Entry<'a>, usize),
    /// The buffer ends inside a record whose header looks sane: a torn write, or more data is needed.
    Incomplete,
    /// The bytes cannot be a record written by [`encode`]; the reason is for the operator's log.
    Corrupt(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// How many bytes the record at the start of `buf` occupies, from its length field; `None` while the buffer
/// does not yet hold a whole record header. A length over the format's limit is reported as is (the decoder
/// rejects it): readers use this only to know whether to read more before decoding.
pub fn frame_len(v: Version, buf: &[u8]) -> Option<usize> {
    (buf.len() >= RECORD_HEADER_LEN).then(|| RECORD_HEADER_LEN + u32_at(buf, 0) as usize + v.trailer())
}

/// Decodes a current-version record at the start of `buf`; see [`decode_as`].
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    decode_as(Version::CURRENT, buf)
}

/// Decodes the record of a `v` log at the start of `buf`. Never panics and never allocates: lengths are checked
/// against the buffer and the format's limits before use.
pub fn decode_as(v: Version, buf: &[u8]) -> Decoded<'_> {
    let Some(total) = frame_len(v, buf) else {
        return Decoded::Incomplete;
    };
    let len = u32_at(buf, 0) as usize;
    if len > MAX_BODY_LEN {
        return Decoded::Corrupt("record length exceeds the format limit");
    }
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    if record_crc(&buf[..total]) != u32_at(buf, 4) {
        return Decoded::Corrupt("crc mismatch");
    }
    let body = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    let stamp_ns = match v {
        Version::V1 => 0,
        Version::V2 => u64_at(buf, RECORD_HEADER_LEN + len),
    };
    let rec = match buf[8] {
        T_SET => {
            let Some((key, rest)) = split_key(body) else {
                return Decoded::Corrupt("bad key length");
            };
            if rest.len() < SET_FIXED - 1 {
                return Decoded::Corrupt("set record too short");
            }
            Record::Set {
                key,
                flags: u32_at(rest, 0),
                exptime: u64_at(rest, 4),
                cas: u64_at(rest, 12),
                time: u64_at(rest, 20),
                value: &rest[SET_FIXED - 1..],
            }
        }
        T_TOUCH => {
            let Some((key, rest)) = split_key(body) else {
                return Decoded::Corrupt("bad key length");
            };
            if rest.len() != 16 {
                return Decoded::Corrupt("touch record has the wrong length");
            }
            Record::Touch { key, exptime: u64_at(rest, 0), cas: u64_at(rest, 8) }
        }
        T_DELETE => {
            let Some((key, rest)) = split_key(body) else {
                return Decoded::Corrupt("bad key length");
            };
            if !rest.is_empty() {
                return Decoded::Corrupt("delete record has the wrong length");
            }
            Record::Delete { key }
        }
        T_FLUSH_ALL => {
            if body.len() != 16 {
                return Decoded::Corrupt("flush_all record has the wrong length");
            }
            Record::FlushAll { at: u64_at(body, 0), max_cas: u64_at(body, 8) }
        }
        _ => return Decoded::Corrupt("unknown record type"),
    };
    Decoded::Ok(Entry { rec, stamp_ns }, total)
}

/// Splits `klen u8 | key` off the front of a body.
fn split_key(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&klen, rest) = body.split_first()?;
    let klen = klen as usize;
    if klen > MAX_KEY_LEN || rest.len() < klen {
        return None;
    }
    Some(rest.split_at(klen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record::Set { key: b"k", flags: 7, exptime: 0, cas: 1, time: 1_700_000_000, value: b"hello" },
            Record::Set { key: b"empty", flags: 0, exptime: 99, cas: u64::MAX, time: 0, value: b"" },
            Record::Set {
                key: &[b'x'; MAX_KEY_LEN],
                flags: u32::MAX,
                exptime: u64::MAX,
                cas: 3,
                time: 4,
                value: &[0xff; 300],
            },
            Record::Touch { key: b"t", exptime: 123, cas: 9 },
            Record::Delete { key: b"gone" },
            Record::FlushAll { at: 1_700_000_030, max_cas: 42 },
        ]
    }

    const STAMP: u64 = 1_733_000_000_123_456_789;

    fn enc(r: &Record<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(r, STAMP, &mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_every_type() {
        for r in samples() {
            let v = enc(&r);
            let want = Entry { rec: r, stamp_ns: STAMP };
            assert_eq!(decode(&v), Decoded::Ok(want, v.len()));
            assert_eq!(frame_len(Version::V2, &v), Some(v.len()));
            // Trailing bytes belong to the next record and are left alone.
            let mut w = v.clone();
            w.extend_from_slice(b"next");
            assert_eq!(decode(&w), Decoded::Ok(want, v.len()));
        }
    }

    #[test]
    fn the_stamp_is_the_last_8_bytes_and_costs_8_bytes() {
        let r = Record::Delete { key: b"gone" };
        let v = enc(&r);
        assert_eq!(v.len(), RECORD_HEADER_LEN + 1 + 4 + STAMP_LEN);
        assert_eq!(u64_at(&v, v.len() - 8), STAMP);
        // Stamping later (as the writer does) gives the same bytes.
        let mut w = b"prefix".to_vec();
        let pending = encode_unstamped(&r, &mut w).unwrap();
        pending.stamp(&mut w, STAMP);
        assert_eq!(&w[6..], &v[..]);
    }

    #[test]
    fn version_1_records_decode_without_a_stamp() {
        // A version 1 frame is a version 2 frame without the stamp, its CRC over the rest.
        for r in samples() {
            let mut v = enc(&r);
            v.truncate(v.len() - STAMP_LEN);
            let crc = record_crc(&v);
            v[4..8].copy_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_as(Version::V1, &v), Decoded::Ok(Entry { rec: r, stamp_ns: 0 }, v.len()));
            // Read as the other version it is torn or corrupt, never a record.
            assert!(!matches!(decode(&v), Decoded::Ok(..)));
        }
    }

    #[test]
    fn headers() {
        for v in [Version::V1, Version::V2] {
            let h = file_header(v);
            assert_eq!(&h[..8], &MAGIC);
            assert_eq!(u32_at(&h, 8), v.number());
            assert_eq!(u32_at(&h, 12), crc32fast::hash(&h[..12]));
            assert_eq!(parse_header(&h), Ok(v));
            for cut in 0..FILE_HEADER_LEN {
                assert_eq!(parse_header(&h[..cut]), Err(HeaderError::Torn), "cut at {cut}");
            }
        }
        assert_eq!(Version::CURRENT.number(), FORMAT_VERSION);
        let mut h = file_header(Version::CURRENT);
        h[15] ^= 1;
        assert_eq!(parse_header(&h), Err(HeaderError::BadChecksum));
        assert_eq!(parse_header(b"not a log at all"), Err(HeaderError::BadMagic));
        assert_eq!(parse_header(b"nope"), Err(HeaderError::BadMagic));
        let mut h3 = file_header(Version::CURRENT);
        h3[8] = 3;
        let crc = crc32fast::hash(&h3[..12]);
        h3[12..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse_header(&h3), Err(HeaderError::Unsupported(3)));
        assert!(HeaderError::Unsupported(3).to_string().contains("versions 1 to 2"));
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for r in samples() {
            let v = enc(&r);
            for cut in 0..v.len() {
                assert_eq!(decode(&v[..cut]), Decoded::Incomplete, "{r:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        for r in samples() {
            let v = enc(&r);
            for byte in 0..v.len() {
                for bit in 0..8 {
                    let mut w = v.clone();
                    w[byte] ^= 1 << bit;
                    // A flipped length bit may make the record look longer than the buffer: torn, not valid.
                    match decode(&w) {
                        Decoded::Corrupt(_) | Decoded::Incomplete => {}
                        Decoded::Ok(..) => {
                            panic!("{r:?}: flip of bit {bit} in byte {byte} accepted")
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn absurd_length_rejected_without_allocating() {
        let mut v = vec![0u8; RECORD_HEADER_LEN];
        v[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&v), Decoded::Corrupt(_)));
        assert!(matches!(decode_as(Version::V1, &v), Decoded::Corrupt(_)));
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert!(matches!(decode(&[0u8; 64]), Decoded::Corrupt(_)));
        assert_eq!(decode(&[0u8; 5]), Decoded::Incomplete);
        assert_eq!(frame_len(Version::V2, &[0u8; 5]), None);
    }

    /// Frames a body with a correct CRC, to reach the body checks behind the CRC.
    fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.push(ty);
        v.extend_from_slice(body);
        v.extend_from_slice(&STAMP.to_le_bytes());
        let crc = record_crc(&v);
        v[4..8].copy_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn malformed_bodies_with_valid_crc_are_corrupt() {
        let cases: Vec<(u8, Vec<u8>)> = vec![
            (T_SET, vec![]),
            (T_SET, vec![251]),
            (T_SET, vec![3, b'a']),
            (T_SET, vec![1, b'a', 0, 0]),
            (T_TOUCH, vec![1, b'a', 0]),
            (T_DELETE, vec![1, b'a', b'b']),
            (T_FLUSH_ALL, vec![0; 15]),
            (99, vec![]),
        ];
        for (ty, body) in cases {
            assert!(matches!(decode(&frame(ty, &body)), Decoded::Corrupt(_)), "type {ty} body {body:?}");
        }
        // Pseudo-random bodies under every type: never a panic.
        let mut x = 0x1234_5678u32;
        for len in 0..200usize {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            for ty in 0..6 {
                let _ = decode(&frame(ty, &body));
            }
        }
    }

    #[test]
    fn oversized_records_refused_and_out_untouched() {
        let long = vec![b'k'; MAX_KEY_LEN + 1];
        let mut out = vec![1, 2, 3];
        assert_eq!(encode(&Record::Delete { key: &long }, 0, &mut out), Err(EncodeError::KeyTooLong(251)));
        assert_eq!(
            encode(&Record::Touch { key: &long, exptime: 0, cas: 0 }, 0, &mut out),
            Err(EncodeError::KeyTooLong(251))
        );
        assert_eq!(out, vec![1, 2, 3]);
    }
}
