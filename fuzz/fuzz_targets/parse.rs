//! `protocol::parse` on arbitrary bytes. Input: byte 0 picks `-I`, bytes 1..3 a split point, the
//! rest is the connection buffer. Checks what the pipeline relies on, beyond "no panic".
#![no_main]

use kv_user::protocol::{
    parse, ArithCmd, Command, GatCmd, Limits, Parsed, StoreCmd, TouchCmd, KEY_MAX_LENGTH, MAX_LINE_NO_NEWLINE,
};
use libfuzzer_sys::fuzz_target;

/// Small limits reach the too-large and line-too-long paths with short inputs.
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
        _ => match prefix {
            Parsed::Incomplete | Parsed::Partial { .. } => {}
            // Only a line still without its newline may end early: memcached's 2048-byte limit
            // depends on how the bytes arrive.
            Parsed::Error { close: true, consumed, .. } if !buf[..k].contains(&b'\n') && k > MAX_LINE_NO_NEWLINE => {
                assert_eq!(consumed, k)
            }
            other => panic!("prefix of {k} bytes gave {other:?}, whole buffer {full:?}"),
        },
    }
});

fn consumed(p: &Parsed<'_>) -> Option<usize> {
    match *p {
        Parsed::Command { consumed, .. } | Parsed::Error { consumed, .. } => Some(consumed),
        Parsed::Incomplete | Parsed::Partial { .. } => None,
    }
}

fn check_one(buf: &[u8], p: &Parsed<'_>) {
    let nl = buf.iter().position(|&b| b == b'\n');
    match *p {
        Parsed::Incomplete => {}
        // Waiting for a data block: the line is complete and the request would end past the buffer.
        Parsed::Partial { total, .. } => {
            let nl = nl.expect("a partial data block without its command line");
            assert!(nl < buf.len() && total > buf.len(), "total {total}, newline at {nl}, len {}", buf.len());
        }
        Parsed::Command { ref cmd, consumed } => {
            // A command always ends a line, and progress is guaranteed.
            let nl = nl.expect("command without a newline");
            assert!(nl < consumed && consumed <= buf.len(), "consumed {consumed}, newline at {nl}, len {}", buf.len());
            check_command(buf, cmd, consumed);
        }
        Parsed::Error { reply, consumed, swallow, close, too_large_key } => {
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {}", buf.len());
            match nl {
                Some(nl) => assert!(nl < consumed),
                // No newline: only the connection-closing overflow checks, which take everything.
                None => assert!(close && consumed == buf.len() && buf.len() > MAX_LINE_NO_NEWLINE),
            }
            if swallow > 0 {
                // The refused data block follows the line; nothing of it is counted in `consumed`.
                assert!(!close && buf[consumed - 1] == b'\n', "swallow {swallow} after {consumed}");
            }
            if too_large_key.is_some() {
                assert!(swallow >= 2, "too large value without swallowing it");
            }
            if !reply.is_empty() {
                assert!(reply.ends_with(b"\r\n"), "reply {reply:?}");
            }
        }
    }
}

fn check_command(buf: &[u8], cmd: &Command<'_>, consumed: usize) {
    match *cmd {
        Command::Store(StoreCmd { key, data, .. }) => {
            assert!(key.len() <= KEY_MAX_LENGTH && !key.is_empty());
            // The data block sits right before the consumed end, followed by \r\n.
            assert_eq!(&buf[consumed - 2..consumed], b"\r\n");
            let start = consumed - 2 - data.len();
            assert_eq!(&buf[start..consumed - 2], data);
        }
        Command::MetaSet { data, .. } => {
            assert_eq!(&buf[consumed - 2..consumed], b"\r\n");
            assert_eq!(&buf[consumed - 2 - data.len()..consumed - 2], data);
        }
        Command::Get { keys, .. } | Command::Gat(GatCmd { keys, .. }) => {
            // `gat <exptime>` alone is valid (memcached answers END); get needs a key.
            assert!(matches!(cmd, Command::Gat(_)) || keys.iter().count() > 0, "get without keys");
            for k in keys.iter() {
                assert!(k.len() <= KEY_MAX_LENGTH && !k.contains(&b' ') && !k.contains(&b'\n'));
            }
        }
        Command::Delete { key, .. }
        | Command::Arith(ArithCmd { key, .. })
        | Command::Touch(TouchCmd { key, .. }) => {
            assert!(key.len() <= KEY_MAX_LENGTH && !key.is_empty());
        }
        _ => {}
    }
}
