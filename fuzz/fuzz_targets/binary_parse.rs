//! `protocol::binary::parse` on arbitrary bytes. Input: byte 0 picks `-I`, bytes 1..3 a split point,
//! the rest is the connection buffer. Checks what the pipeline relies on, beyond "no panic".
#![no_main]

use kv_user::protocol::binary::{parse, BinCmd, BinParsed, HEADER_LEN};
use kv_user::protocol::{Limits, KEY_MAX_LENGTH};
use libfuzzer_sys::fuzz_target;

/// Small limits reach the too-large paths with short inputs.
const ITEM_SIZE_MAX: [usize; 4] = [1024, 3000, 64 << 10, 1 << 20];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let limits = Limits { item_size_max: ITEM_SIZE_MAX[usize::from(data[0] & 3)] };
    let split = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let buf = &data[3..];
    let full = parse(buf, &limits);
    check_one(buf, &full);

    // The same bytes arriving in two reads: the first read must wait for more, or give the same answer.
    let k = split % (buf.len() + 1);
    let prefix = parse(&buf[..k], &limits);
    check_one(&buf[..k], &prefix);
    match consumed(&full) {
        Some(c) if c <= k => assert_eq!(prefix, full, "split at {k} changed the result"),
        _ => assert!(
            matches!(prefix, BinParsed::Incomplete | BinParsed::Partial { .. }),
            "prefix of {k} bytes gave {prefix:?}, whole buffer {full:?}"
        ),
    }
});

/// How much of the buffer the answer rests on (a bad magic is seen once a header's worth is in).
fn consumed(p: &BinParsed<'_>) -> Option<usize> {
    match *p {
        BinParsed::Request { consumed, .. } | BinParsed::Error { consumed, .. } => Some(consumed),
        BinParsed::BadMagic => Some(HEADER_LEN),
        BinParsed::Incomplete | BinParsed::Partial { .. } => None,
    }
}

fn check_one(buf: &[u8], p: &BinParsed<'_>) {
    match *p {
        BinParsed::Incomplete => {}
        BinParsed::BadMagic => assert!(buf.len() >= HEADER_LEN && buf[0] != 0x80),
        BinParsed::Partial { total, .. } => assert!(total > buf.len() && buf.len() >= HEADER_LEN),
        BinParsed::Request { ref req, consumed } => {
            // Progress, within the buffer.
            assert!((HEADER_LEN..=buf.len()).contains(&consumed), "consumed {consumed} of {}", buf.len());
            match req.cmd {
                BinCmd::Store { cmd, .. } => {
                    assert!(!cmd.key.is_empty() && cmd.key.len() <= KEY_MAX_LENGTH);
                    // The value is the request's last bytes.
                    assert_eq!(&buf[consumed - cmd.data.len()..consumed], cmd.data);
                }
                BinCmd::Get { key, .. } | BinCmd::Delete { key, .. } => {
                    assert!(!key.is_empty() && key.len() <= KEY_MAX_LENGTH)
                }
                _ => {}
            }
        }
        BinParsed::Error { consumed, swallow, close, too_large_key, .. } => {
            assert!((HEADER_LEN..=buf.len()).contains(&consumed), "consumed {consumed} of {}", buf.len());
            assert!(!(close && swallow > 0), "a closing error swallows nothing");
            if let Some(key) = too_large_key {
                assert!(key.len() <= KEY_MAX_LENGTH);
            }
        }
    }
}
