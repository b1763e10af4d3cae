//! Base64 keys of the meta commands (`b` flag): the one decoder and the one encoder, both as
//! memcached 1.6's `base64.c`.
//!
//! The parser validates a key with [`decoded_len`] and keeps it encoded; the executor decodes it
//! with [`decode`] and echoes it (`k`) with [`encode`]. Both use the same rules, so a key the parser
//! accepts always decodes. Measured on memcached 1.6.18 (`mg <key> b k v`):
//!
//! * Bytes outside the alphabet are skipped: `Zm!9v` is `foo`.
//! * The alphabet bytes (with `=`) must come in groups of four: `Zm9`, `Zm9v=`, `!!!!` fail
//!   (`CLIENT_ERROR error decoding key`; md and ma fold it into `invalid or duplicate flag`).
//! * `=` decodes as zero bits wherever it stands; a group with one or two `=` yields two or one
//!   bytes and ends the key (`Zm8=Zm9v` is `fo`, `Zg=A` is `f\0`), three or four fail.
//! * Trailing bits are not checked: `Zm9=` is `fo`, echoed back as `Zm8=`.
//! * The encoder pads with `=`, without line breaks.

use bytes::BufMut;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The value of an alphabet byte; `=` is 0 (and counts as padding).
fn value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        b'=' => Some(0),
        _ => None,
    }
}

/// memcached's `base64_decode`, writing to `out` when given. Returns the decoded length, or None
/// where memcached returns 0 (failure) or `out` is too short.
fn run(src: &[u8], mut out: Option<&mut [u8]>) -> Option<usize> {
    let count = src.iter().filter(|&&c| value(c).is_some()).count();
    if count == 0 || count % 4 != 0 {
        return None;
    }
    let mut pos = 0usize;
    let mut block = [0u8; 4];
    let mut n = 0;
    let mut pad = 0;
    for &c in src {
        let Some(v) = value(c) else { continue };
        if c == b'=' {
            pad += 1;
        }
        block[n] = v;
        n += 1;
        if n < 4 {
            continue;
        }
        // memcached writes the whole group, then backs off one byte per `=`.
        let keep = match pad {
            0 => 3,
            1 => 2,
            2 => 1,
            _ => return None,
        };
        if let Some(o) = out.as_deref_mut() {
            let bytes =
                [(block[0] << 2) | (block[1] >> 4), (block[1] << 4) | (block[2] >> 2), (block[2] << 6) | block[3]];
            o.get_mut(pos..pos + keep)?.copy_from_slice(&bytes[..keep]);
        }
        pos += keep;
        n = 0;
        if pad > 0 {
            break;
        }
    }
    (pos > 0).then_some(pos)
}

/// The length `src` decodes to, or None if memcached rejects it.
pub fn decoded_len(src: &[u8]) -> Option<usize> {
    run(src, None)
}

/// Decodes `src` into `out`, returning the number of bytes written, or None if memcached rejects
/// the key or `out` is too short. A key of at most 250 encoded bytes decodes to at most 186 bytes.
pub fn decode(src: &[u8], out: &mut [u8]) -> Option<usize> {
    if out.len() < decoded_len(src)? {
        return None;
    }
    run(src, Some(out))
}

/// Appends the padded base64 form of `src` (memcached's `base64_encode`).
pub fn encode(src: &[u8], out: &mut impl BufMut) {
    let sym = |i: u8| ALPHABET[usize::from(i & 63)];
    for chunk in src.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let mut group = [sym(b[0] >> 2), sym((b[0] << 4) | (b[1] >> 4)), sym((b[1] << 2) | (b[2] >> 6)), sym(b[2])];
        for g in group.iter_mut().skip(chunk.len() + 1) {
            *g = b'=';
        }
        out.put_slice(&group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(src: &[u8]) -> String {
        let mut out = Vec::new();
        encode(src, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn dec(src: &[u8]) -> Option<Vec<u8>> {
        let mut out = [0u8; 250];
        decode(src, &mut out).map(|n| out[..n].to_vec())
    }

    #[test]
    fn decodes_like_memcached() {
        let mut out = [0u8; 187];
        assert_eq!(decode(b"Zm9v", &mut out), Some(3));
        assert_eq!(&out[..3], b"foo");
        assert_eq!(decode(b"Zm8=", &mut out), Some(2));
        assert_eq!(&out[..2], b"fo");
        assert_eq!(decode(b"Zg==", &mut out), Some(1));
        assert_eq!(&out[..1], b"f");
        assert_eq!(decode(b"AAEC/w==", &mut out), Some(4));
        assert_eq!(&out[..4], &[0, 1, 2, 255]);
        // memcached skips bytes outside the alphabet and stops after a padded group.
        assert_eq!(decode(b"Zm\x01 9v", &mut out), Some(3));
        assert_eq!(decode(b"Zg==Zm9v", &mut out), Some(1));
        assert_eq!(decode(b"Zm9", &mut out), None);
        assert_eq!(decode(b"", &mut out), None);
        assert_eq!(decode(b"Z===", &mut out), None);
        assert_eq!(decode(b"Zm9v", &mut out[..2]), None);
        let full = "QUFB".repeat(62) + "QQ==";
        assert_eq!(decode(full.as_bytes(), &mut out), Some(187));
        assert!(out[..187].iter().all(|&b| b == b'A'));
    }

    /// The keys probed on memcached 1.6.18 (see the module docs), decoded and echoed back.
    #[test]
    fn memcached_1_6_18_cases() {
        for (key, decoded, echo) in [
            (&b"Zm9v"[..], &b"foo"[..], "Zm9v"),
            (b"Zm!9v", b"foo", "Zm9v"),
            (b"Z.m9v", b"foo", "Zm9v"),
            (b"Zm9v!", b"foo", "Zm9v"),
            (b"Zm8=Zm9v", b"fo", "Zm8="),
            (b"Zm9=", b"fo", "Zm8="),
            (b"Zg=A", b"f\0", "ZgA="),
            (b"=Zm9", b"\x01\x99", "AZk="),
            (b"AA==", b"\0", "AA=="),
            (b"Zm9vYQ==", b"fooa", "Zm9vYQ=="),
            (b"bm4=", b"nn", "bm4="),
        ] {
            let got = dec(key).unwrap_or_else(|| panic!("{key:?} should decode"));
            assert_eq!(got, decoded, "{key:?}");
            assert_eq!(decoded_len(key), Some(decoded.len()), "{key:?}");
            assert_eq!(enc(&got), echo, "{key:?}");
        }
        for key in
            [&b"Zm9v="[..], b"Zm9", b"!!!!", b"!!!", b"Zm9vZ", b"Z===", b"====", b"Zm9vYQ", b"Zm9vYQ=", b"Zm9v\tb"]
        {
            assert_eq!(dec(key), None, "{key:?}");
            assert_eq!(decoded_len(key), None, "{key:?}");
        }
    }

    #[test]
    fn encode_pads_and_round_trips() {
        assert_eq!(enc(b""), "");
        assert_eq!(enc(b"f"), "Zg==");
        assert_eq!(enc(b"fo"), "Zm8=");
        assert_eq!(enc(b"foo"), "Zm9v");
        assert_eq!(enc(b"foob"), "Zm9vYg==");
        assert_eq!(enc(&[0, 0xff]), "AP8=");
        assert_eq!(enc(&[0xfb, 0xff, 0xbf]), "+/+/");
        for len in 1..=186 {
            let src: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            assert_eq!(dec(enc(&src).as_bytes()), Some(src));
        }
    }
}
