use super::*;
use crate::protocol::command::SetMode;
use crate::protocol::Limits;

fn req(opcode: u8, key: &[u8], extras: &[u8], value: &[u8], opaque: u32, cas: u64) -> Vec<u8> {
    let mut p = vec![REQUEST_MAGIC, opcode];
    p.extend_from_slice(&(key.len() as u16).to_be_bytes());
    p.extend_from_slice(&[extras.len() as u8, 0, 0, 0]);
    p.extend_from_slice(&((extras.len() + key.len() + value.len()) as u32).to_be_bytes());
    p.extend_from_slice(&opaque.to_be_bytes());
    p.extend_from_slice(&cas.to_be_bytes());
    p.extend_from_slice(extras);
    p.extend_from_slice(key);
    p.extend_from_slice(value);
    p
}

const LIMITS: Limits = Limits { item_size_max: 1024 };

#[test]
fn a_set_with_cas_is_a_compare_and_swap_and_waits_for_its_value() {
    let p = req(op::SETQ, b"k", &[0, 0, 0, 7, 0, 0, 0, 9], b"value", 0xabcd, 42);
    for cut in 0..p.len() {
        assert!(matches!(parse(&p[..cut], &LIMITS), BinParsed::Incomplete | BinParsed::Partial { .. }), "cut {cut}");
    }
    let BinParsed::Request { req, consumed } = parse(&p, &LIMITS) else { panic!("{:?}", parse(&p, &LIMITS)) };
    assert_eq!(consumed, p.len());
    assert_eq!(req.echo, Echo { opcode: op::SETQ, opaque: 0xabcd });
    assert!(req.quiet);
    let BinCmd::Store { cmd, base } = req.cmd else { panic!("{req:?}") };
    assert_eq!(
        (cmd.mode, cmd.cas_unique, cmd.flags, cmd.exptime, cmd.data, base),
        (SetMode::Cas, 42, 7, 9, &b"value"[..], op::SET)
    );
}

#[test]
fn malformed_headers_are_refused_from_the_header_alone() {
    // A get with extras: invalid arguments and close, though the extras never arrived.
    let p = req(op::GET, b"k", b"xxxx", b"", 1, 0);
    let e = parse(&p[..HEADER_LEN], &LIMITS);
    assert!(
        matches!(e, BinParsed::Error { status: Status::InvalidArguments, consumed: HEADER_LEN, close: true, .. }),
        "{e:?}"
    );
    // Key longer than the body.
    let mut lie = req(op::GET, b"abcd", b"", b"", 2, 0);
    lie[8..12].copy_from_slice(&2u32.to_be_bytes());
    let e = parse(&lie[..HEADER_LEN], &LIMITS);
    assert!(matches!(e, BinParsed::Error { status: Status::UnknownCommand, close: true, .. }), "{e:?}");
    let mut bad = req(op::NOOP, b"", b"", b"", 3, 0);
    bad[0] = 0x81;
    assert_eq!(parse(&bad, &LIMITS), BinParsed::BadMagic);
}

#[test]
fn too_large_values_are_refused_before_they_arrive() {
    let p = req(op::SET, b"big", &[0; 8], &[b'x'; 2000], 4, 0);
    let e = parse(&p[..HEADER_LEN + 11], &LIMITS);
    let BinParsed::Error { status, consumed, swallow, close, too_large_key, .. } = e else { panic!("{e:?}") };
    assert_eq!(
        (status, consumed, swallow, close, too_large_key),
        (Status::TooLarge, HEADER_LEN + 11, 2000, false, Some(&b"big"[..]))
    );
    // An unknown opcode's body is discarded, and the connection goes on.
    let p = req(0x50, b"k", b"", b"body", 5, 0);
    let e = parse(&p, &LIMITS);
    assert!(
        matches!(e, BinParsed::Error { status: Status::UnknownCommand, consumed: 25, swallow: 4, close: false, .. }),
        "{e:?}"
    );
}

/// A get hit's response through the shared formatter equals the layout memcached documents, field by
/// field (the XDP program sends the same prefix, from the same function).
#[test]
fn get_hit_response_layout() {
    use bytes::BytesMut;
    let mut out = BytesMut::new();
    reply::get_hit(
        &mut out,
        Echo { opcode: op::GETK, opaque: 0x0102_0304 },
        0xa1b2,
        0xdead_beef,
        Some(b"key"),
        b"val!",
    );
    let mut want = vec![RESPONSE_MAGIC, op::GETK, 0, 3, 4, 0, 0, 0];
    want.extend_from_slice(&(4u32 + 3 + 4).to_be_bytes());
    want.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    want.extend_from_slice(&0xa1b2u64.to_be_bytes());
    want.extend_from_slice(&0xdead_beefu32.to_be_bytes());
    want.extend_from_slice(b"keyval!");
    assert_eq!(&out[..], &want[..]);
    // get: no key, and the body is flags and value only.
    out.clear();
    reply::get_hit(&mut out, Echo { opcode: op::GET, opaque: 9 }, 1, 0, None, b"");
    assert_eq!(&out[..8], &[RESPONSE_MAGIC, op::GET, 0, 0, 4, 0, 0, 0]);
    assert_eq!(&out[8..12], &4u32.to_be_bytes());
    assert_eq!(out.len(), HEADER_LEN + 4);
}
