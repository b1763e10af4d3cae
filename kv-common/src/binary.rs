//! The memcached binary protocol's response header, shared by user space (every binary response) and
//! the XDP program (`get`/`getk` hits): one formatter, so the kernel's replies cannot drift from user
//! space's. Reference: memcached's `protocol_binary.h`.

/// First byte of every binary request.
pub const BIN_REQUEST_MAGIC: u8 = 0x80;
/// First byte of every binary response.
pub const BIN_RESPONSE_MAGIC: u8 = 0x81;
/// Fixed header length, requests and responses alike.
pub const BIN_HEADER_LEN: usize = 24;
/// Opcode of `get`: the hit's response carries flags and value.
pub const BIN_OP_GET: u8 = 0x00;
/// Opcode of `getk`: as `get`, with the key between flags and value.
pub const BIN_OP_GETK: u8 = 0x0c;
/// Extras of a `get` hit: the item's client flags (u32, big-endian).
pub const BIN_GET_EXTRAS: usize = 4;
/// What comes before the key (`getk`) and the value in a `get`/`getk` hit: header, then flags.
pub const BIN_GET_PREFIX_LEN: usize = BIN_HEADER_LEN + BIN_GET_EXTRAS;

/// A binary response header (host order; big-endian on the wire). The data type is always 0 (raw bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BinHeader {
    /// The request's opcode, echoed.
    pub opcode: u8,
    pub keylen: u16,
    pub extlen: u8,
    pub status: u16,
    /// Extras + key + value.
    pub body_len: u32,
    /// The request's opaque, echoed.
    pub opaque: u32,
    pub cas: u64,
}

impl BinHeader {
    /// The wire bytes.
    #[inline(always)]
    pub const fn to_bytes(&self) -> [u8; BIN_HEADER_LEN] {
        let [k0, k1] = self.keylen.to_be_bytes();
        let [s0, s1] = self.status.to_be_bytes();
        let [b0, b1, b2, b3] = self.body_len.to_be_bytes();
        let [o0, o1, o2, o3] = self.opaque.to_be_bytes();
        let [c0, c1, c2, c3, c4, c5, c6, c7] = self.cas.to_be_bytes();
        [
            BIN_RESPONSE_MAGIC,
            self.opcode,
            k0,
            k1,
            self.extlen,
            0,
            s0,
            s1,
            b0,
            b1,
            b2,
            b3,
            o0,
            o1,
            o2,
            o3,
            c0,
            c1,
            c2,
            c3,
            c4,
            c5,
            c6,
            c7,
        ]
    }
}

/// The start of a `get`/`getk` hit's response, header and flags: the key (`key_len` bytes, 0 for `get`)
/// and the value (`value_len` bytes) follow it.
#[inline(always)]
pub const fn get_hit_prefix(
    opcode: u8,
    opaque: u32,
    cas: u64,
    flags: u32,
    key_len: u16,
    value_len: u32,
) -> [u8; BIN_GET_PREFIX_LEN] {
    let h = BinHeader {
        opcode,
        keylen: key_len,
        extlen: BIN_GET_EXTRAS as u8,
        status: 0,
        body_len: BIN_GET_EXTRAS as u32 + key_len as u32 + value_len,
        opaque,
        cas,
    }
    .to_bytes();
    let f = flags.to_be_bytes();
    let mut out = [0u8; BIN_GET_PREFIX_LEN];
    let mut i = 0;
    while i < BIN_HEADER_LEN {
        out[i] = h[i];
        i += 1;
    }
    out[BIN_HEADER_LEN] = f[0];
    out[BIN_HEADER_LEN + 1] = f[1];
    out[BIN_HEADER_LEN + 2] = f[2];
    out[BIN_HEADER_LEN + 3] = f[3];
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        let h = BinHeader {
            opcode: 0x0c,
            keylen: 0x0102,
            extlen: 4,
            status: 0x0081,
            body_len: 0x0a0b_0c0d,
            opaque: 0xdead_beef,
            cas: 0x1122_3344_5566_7788,
        };
        assert_eq!(
            h.to_bytes(),
            [
                0x81, 0x0c, 0x01, 0x02, 4, 0, 0x00, 0x81, 0x0a, 0x0b, 0x0c, 0x0d, 0xde, 0xad, 0xbe, 0xef, 0x11, 0x22,
                0x33, 0x44, 0x55, 0x66, 0x77, 0x88
            ]
        );
    }

    #[test]
    fn get_hit_prefix_is_header_then_flags() {
        let p = get_hit_prefix(BIN_OP_GETK, 7, 99, 0x0102_0304, 3, 10);
        let h = BinHeader { opcode: BIN_OP_GETK, keylen: 3, extlen: 4, status: 0, body_len: 17, opaque: 7, cas: 99 };
        assert_eq!(p[..BIN_HEADER_LEN], h.to_bytes());
        assert_eq!(p[BIN_HEADER_LEN..], [1, 2, 3, 4]);
        let p = get_hit_prefix(BIN_OP_GET, 0, 0, 0, 0, 0);
        assert_eq!(&p[8..12], &4u32.to_be_bytes(), "body: the flags alone");
    }
}
