//! The on-disk encoding of the log: pure functions, no I/O. See the layout in the parent module's docs.

use std::fmt;

use crate::record::Record;

/// Identifies a kv log file; the trailing bytes catch text-mode/line-ending mangling.
pub const MAGIC: [u8; 8] = *b"KVLOG\0\r\n";
/// Bumped on any incompatible change of the layout below.
pub const FORMAT_VERSION: u32 = 1;
/// `magic[8] | version u32 | crc32(magic, version) u32`.
pub const FILE_HEADER_LEN: usize = 16;
/// `len u32 | crc32 u32 | type u8`, then `len` bytes of body.
pub const RECORD_HEADER_LEN: usize = 9;
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

/// The file header every log starts with.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
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

/// Appends one framed record to `out`. On error `out` is left unchanged, so the decoder never sees
/// anything it would reject.
pub fn encode(rec: &Record<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
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
    out.reserve(RECORD_HEADER_LEN + body_len);
    // Bounded by MAX_BODY_LEN < u32::MAX, checked above.
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
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
    let crc = record_crc(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// CRC over the length field, the type byte and the body (everything in the frame but the CRC itself).
fn record_crc(len: &[u8], type_and_body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(type_and_body);
    h.finalize()
}

/// The result of decoding the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record and the number of bytes it occupies.
    Ok(Record<'a>, usize),
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

/// Decodes the record at the start of `buf`. Never panics and never allocates: lengths are checked
/// against the buffer and the format's limits before use.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < RECORD_HEADER_LEN {
        return Decoded::Incomplete;
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_BODY_LEN {
        return Decoded::Corrupt("record length exceeds the format limit");
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    if record_crc(&buf[..4], &buf[8..total]) != u32_at(buf, 4) {
        return Decoded::Corrupt("crc mismatch");
    }
    let body = &buf[RECORD_HEADER_LEN..total];
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
    Decoded::Ok(rec, total)
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

    fn enc(r: &Record<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        encode(r, &mut v).unwrap();
        v
    }

    #[test]
    fn round_trip_every_type() {
        for r in samples() {
            let v = enc(&r);
            assert_eq!(decode(&v), Decoded::Ok(r, v.len()));
            // Trailing bytes belong to the next record and are left alone.
            let mut w = v.clone();
            w.extend_from_slice(b"next");
            assert_eq!(decode(&w), Decoded::Ok(r, v.len()));
        }
    }

    #[test]
    fn header_is_stable() {
        let h = file_header();
        assert_eq!(&h[..8], &MAGIC);
        assert_eq!(u32_at(&h, 8), FORMAT_VERSION);
        assert_eq!(u32_at(&h, 12), crc32fast::hash(&h[..12]));
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
    }

    #[test]
    fn zeros_are_not_a_record() {
        assert!(matches!(decode(&[0u8; 64]), Decoded::Corrupt(_)));
        assert_eq!(decode(&[0u8; 5]), Decoded::Incomplete);
    }

    /// Frames a body with a correct CRC, to reach the body checks behind the CRC.
    fn frame(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(body.len() as u32).to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.push(ty);
        v.extend_from_slice(body);
        let crc = record_crc(&v[..4], &v[8..]);
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
        assert_eq!(encode(&Record::Delete { key: &long }, &mut out), Err(EncodeError::KeyTooLong(251)));
        assert_eq!(
            encode(&Record::Touch { key: &long, exptime: 0, cas: 0 }, &mut out),
            Err(EncodeError::KeyTooLong(251))
        );
        assert_eq!(out, vec![1, 2, 3]);
    }
}
