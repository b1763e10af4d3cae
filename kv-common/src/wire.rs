//! The memcached wire contract shared by the XDP program and user space: the reply trailer, the UDP
//! frame header, the `VALUE` line of a `get`/`gets` reply and the item-size formula. One definition, so
//! the kernel and user-space replies cannot drift apart. No allocation: every buffer has a fixed size.

use crate::{MAX_KEY_LEN, UDP_FRAME_HEADER_LEN};

/// The line that ends every `get`/`gets` reply, hits or not.
pub const END: &[u8] = b"END\r\n";

/// Most decimal digits of a `u64` (`u64::MAX` = 18446744073709551615).
pub const U64_MAX_DIGITS: usize = 20;
/// Most decimal digits of a `u32` (`u32::MAX` = 4294967295): the flags of a `VALUE` line.
pub const U32_MAX_DIGITS: usize = 10;

/// Room for the ` <cas>` field of a `gets` reply: a space and up to [`U64_MAX_DIGITS`] digits (see
/// `CacheEntry::cas`).
pub const CAS_FIELD_LEN: usize = 1 + U64_MAX_DIGITS;

/// How a storage command combines with the existing item: `set`, `add`, `replace`, `append`,
/// `prepend`, `cas` (and `ms`'s mode flag). One type for the parser, the command layer and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetMode {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    /// Store only if the item exists and its CAS equals the given one.
    Cas,
}

/// `sizeof(item)` on 64-bit memcached: the fixed part of an item.
pub const ITEM_HEADER_SIZE: u64 = 48;

/// The size the item size limit (`-I`) is checked against, as memcached's `item_size_ok` computes it:
/// header, key + NUL, client flags if non-zero, CAS, value + `\r\n`. Saturates rather than wrap, so
/// absurd lengths never pass for small ones.
#[inline]
pub const fn item_size(key_len: usize, flags: u32, value_len: usize) -> u64 {
    let flags_size = if flags != 0 { 4 } else { 0 };
    let fixed = ITEM_HEADER_SIZE + 1 + flags_size + 8 + 2;
    fixed.saturating_add(key_len as u64).saturating_add(value_len as u64)
}

/// A `u64` in decimal without leading zeros ("0" for zero), formatted into a fixed buffer.
#[derive(Clone, Copy)]
pub struct Decimal {
    buf: [u8; U64_MAX_DIGITS],
    start: u8,
}

impl Decimal {
    pub const fn new(mut v: u64) -> Self {
        let mut buf = [0u8; U64_MAX_DIGITS];
        let mut start = U64_MAX_DIGITS;
        loop {
            start -= 1;
            buf[start] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        Decimal { buf, start: start as u8 }
    }

    /// The digits (1 to [`U64_MAX_DIGITS`] of them).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start as usize..]
    }
}

/// Longest `VALUE <key> <flags> <bytes> <cas>\r\n` header: a [`MAX_KEY_LEN`] key, then the widest flags,
/// byte count and CAS.
pub const VALUE_HEADER_MAX: usize =
    b"VALUE ".len() + MAX_KEY_LEN + 1 + U32_MAX_DIGITS + 1 + U64_MAX_DIGITS + 1 + U64_MAX_DIGITS + b"\r\n".len();

/// Writes the header line of one item in a `get`/`gets` reply, `VALUE <key> <flags> <bytes>[ <cas>]\r\n`,
/// piece by piece into `put` (user space appends straight to its reply buffer). Returns the length of
/// the part before ` <cas>` and the length of ` <cas>` (0 without a CAS). The one formatter of this line:
/// [`ValueHeader`] (kernel cache entries) is built with it too.
pub fn write_value_header(
    key: &[u8],
    flags: u32,
    value_len: usize,
    cas: Option<u64>,
    put: &mut impl FnMut(&[u8]),
) -> (usize, usize) {
    let (flags, len) = (Decimal::new(flags as u64), Decimal::new(value_len as u64));
    let hdr_len = b"VALUE ".len() + key.len() + 1 + flags.as_bytes().len() + 1 + len.as_bytes().len();
    for part in [&b"VALUE "[..], key, b" ", flags.as_bytes(), b" ", len.as_bytes()] {
        put(part);
    }
    let mut cas_len = 0;
    if let Some(cas) = cas {
        let cas = Decimal::new(cas);
        put(b" ");
        put(cas.as_bytes());
        cas_len = 1 + cas.as_bytes().len();
    }
    put(b"\r\n");
    (hdr_len, cas_len)
}

/// The header line of one item in a `get`/`gets` reply, `VALUE <key> <flags> <bytes>[ <cas>]\r\n`,
/// byte-identical to what memcached sends; the data block and its `\r\n` follow it on the wire.
///
/// The kernel cache keeps the `get` form with the ` <cas>` field aside ([`ValueHeader::cas_field`]),
/// to be inserted at [`ValueHeader::hdr_len`] for `gets`.
#[derive(Clone, Copy)]
pub struct ValueHeader {
    buf: [u8; VALUE_HEADER_MAX],
    len: u16,
    hdr_len: u16,
    cas_len: u8,
}

impl ValueHeader {
    /// Formats the header of an item with this key, client flags, value length and (for `gets`) CAS.
    /// None if the key is longer than [`MAX_KEY_LEN`] (the caller validates keys; this only bounds the
    /// buffer).
    pub fn new(key: &[u8], flags: u32, value_len: usize, cas: Option<u64>) -> Option<ValueHeader> {
        if key.len() > MAX_KEY_LEN {
            return None;
        }
        let mut buf = [0; VALUE_HEADER_MAX];
        let mut len = 0;
        let (hdr_len, cas_len) = write_value_header(key, flags, value_len, cas, &mut |bytes| {
            buf[len..len + bytes.len()].copy_from_slice(bytes);
            len += bytes.len();
        });
        Some(ValueHeader { buf, len: len as u16, hdr_len: hdr_len as u16, cas_len: cas_len as u8 })
    }

    /// The whole header, `\r\n` included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    /// Bytes before the ` <cas>` field (`VALUE <key> <flags> <bytes>`).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len as usize
    }

    /// Length of ` <cas>` (0 without a CAS); at most [`CAS_FIELD_LEN`].
    pub fn cas_len(&self) -> usize {
        self.cas_len as usize
    }

    /// The ` <cas>` field itself (empty without a CAS).
    pub fn cas_field(&self) -> &[u8] {
        &self.buf[self.hdr_len()..self.hdr_len() + self.cas_len()]
    }
}

/// memcached's UDP frame header, in front of every request and reply datagram (all fields big-endian
/// on the wire, [`UDP_FRAME_HEADER_LEN`] bytes).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// Chosen by the client, echoed in every datagram of the reply.
    pub request_id: u16,
    /// Number of this datagram within the message, from 0.
    pub seq: u16,
    /// Datagrams in the message.
    pub total: u16,
    /// Must be 0.
    pub reserved: u16,
}

impl FrameHeader {
    /// The header from its wire bytes.
    #[inline(always)]
    pub const fn from_bytes(b: [u8; UDP_FRAME_HEADER_LEN]) -> FrameHeader {
        FrameHeader {
            request_id: u16::from_be_bytes([b[0], b[1]]),
            seq: u16::from_be_bytes([b[2], b[3]]),
            total: u16::from_be_bytes([b[4], b[5]]),
            reserved: u16::from_be_bytes([b[6], b[7]]),
        }
    }

    /// The header at the start of a datagram; None if it is shorter than [`UDP_FRAME_HEADER_LEN`].
    #[inline]
    pub fn parse(datagram: &[u8]) -> Option<FrameHeader> {
        datagram.first_chunk::<UDP_FRAME_HEADER_LEN>().map(|b| FrameHeader::from_bytes(*b))
    }

    /// The wire bytes.
    #[inline(always)]
    pub const fn to_bytes(&self) -> [u8; UDP_FRAME_HEADER_LEN] {
        let [r0, r1] = self.request_id.to_be_bytes();
        let [s0, s1] = self.seq.to_be_bytes();
        let [t0, t1] = self.total.to_be_bytes();
        let [z0, z1] = self.reserved.to_be_bytes();
        [r0, r1, s0, s1, t0, t1, z0, z1]
    }

    /// Writes the wire bytes to the start of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`UDP_FRAME_HEADER_LEN`].
    #[inline]
    pub fn write(&self, out: &mut [u8]) {
        out[..UDP_FRAME_HEADER_LEN].copy_from_slice(&self.to_bytes());
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{format, string::String, vec::Vec};

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn decimal_matches_display() {
        let mut vals: Vec<u64> = (0..=1000).collect();
        for p in 0..20 {
            let t = 10u64.pow(p);
            vals.extend([t - 1, t, t + 1]);
        }
        vals.extend([u64::MAX, u64::MAX - 1, u32::MAX as u64, u32::MAX as u64 + 1]);
        for v in vals {
            assert_eq!(text(Decimal::new(v).as_bytes()), format!("{v}"));
        }
    }

    #[test]
    fn value_header_get_and_gets() {
        let h = ValueHeader::new(b"foo", 0, 3, None).unwrap();
        assert_eq!(h.as_bytes(), b"VALUE foo 0 3\r\n");
        assert_eq!((h.hdr_len(), h.cas_len()), (13, 0));
        assert_eq!(h.cas_field(), b"");

        let h = ValueHeader::new(b"k", 42, 0, Some(7)).unwrap();
        assert_eq!(h.as_bytes(), b"VALUE k 42 0 7\r\n");
        assert_eq!((h.hdr_len(), h.cas_len()), (12, 2));
        assert_eq!(h.cas_field(), b" 7");
    }

    #[test]
    fn value_header_widest_fits() {
        let key = [b'x'; MAX_KEY_LEN];
        let h = ValueHeader::new(&key, u32::MAX, usize::MAX, Some(u64::MAX)).unwrap();
        let want = format!("VALUE {} {} {} {}\r\n", text(&key), u32::MAX, usize::MAX, u64::MAX);
        assert_eq!(text(h.as_bytes()), want);
        assert_eq!(h.as_bytes().len(), VALUE_HEADER_MAX);
        assert_eq!(h.cas_len(), 1 + U64_MAX_DIGITS);
        assert!(h.cas_len() <= CAS_FIELD_LEN);
        assert!(ValueHeader::new(&[b'x'; MAX_KEY_LEN + 1], 0, 0, None).is_none());
    }

    /// The layout `value_line` in kv-user produces: header, CAS, `\r\n`, against `format!`.
    #[test]
    fn value_header_matches_format() {
        let keys: [&[u8]; 4] = [b"a", b"user:1234", b"\x7e!key", &[b'z'; 200]];
        for key in keys {
            for flags in [0, 1, 65535, u32::MAX] {
                for len in [0usize, 5, 1384, 1 << 20] {
                    for cas in [None, Some(0), Some(1), Some(123456789), Some(u64::MAX)] {
                        let h = ValueHeader::new(key, flags, len, cas).unwrap();
                        let base = format!("VALUE {} {flags} {len}", text(key));
                        let cas_s = cas.map(|c| format!(" {c}")).unwrap_or_default();
                        assert_eq!(text(h.as_bytes()), format!("{base}{cas_s}\r\n"));
                        assert_eq!(h.hdr_len(), base.len());
                        assert_eq!(text(h.cas_field()), cas_s);
                    }
                }
            }
        }
    }

    #[test]
    fn frame_header_round_trip() {
        let bytes = [0x12, 0x34, 0, 1, 0, 2, 0, 0];
        let h = FrameHeader::parse(&bytes).unwrap();
        assert_eq!(h, FrameHeader { request_id: 0x1234, seq: 1, total: 2, reserved: 0 });
        assert_eq!(h.to_bytes(), bytes);
        assert_eq!(FrameHeader::from_bytes(bytes), h);
        let mut out = [0xffu8; 10];
        h.write(&mut out);
        assert_eq!(&out[..8], &bytes);
        assert_eq!(&out[8..], &[0xff, 0xff]);
        // Longer input: only the first 8 bytes count.
        assert_eq!(
            FrameHeader::parse(&[0xab, 0xcd, 0xff, 0xfe, 0x80, 0x01, 0x02, 0x03, 9, 9]).unwrap().to_bytes(),
            [0xab, 0xcd, 0xff, 0xfe, 0x80, 0x01, 0x02, 0x03]
        );
        assert_eq!(FrameHeader::parse(&bytes[..7]), None);
        assert_eq!(FrameHeader::parse(&[]), None);
    }

    #[test]
    #[should_panic]
    fn frame_header_write_short() {
        FrameHeader { request_id: 1, seq: 0, total: 1, reserved: 0 }.write(&mut [0u8; 7]);
    }

    #[test]
    fn item_size_formula() {
        assert_eq!(item_size(0, 0, 0), 59);
        assert_eq!(item_size(3, 0, 10), 59 + 13);
        assert_eq!(item_size(3, 7, 10), 63 + 13);
        assert_eq!(item_size(MAX_KEY_LEN, 1, 1 << 20), ITEM_HEADER_SIZE + 250 + 1 + 4 + 8 + (1 << 20) + 2);
        assert_eq!(item_size(usize::MAX, 0, usize::MAX), u64::MAX);
    }

    #[test]
    fn constants() {
        assert_eq!(END, b"END\r\n");
        assert_eq!(CAS_FIELD_LEN, 21);
        assert_eq!(Decimal::new(u64::MAX).as_bytes().len(), U64_MAX_DIGITS);
        assert_eq!(Decimal::new(u32::MAX.into()).as_bytes().len(), U32_MAX_DIGITS);
    }
}
