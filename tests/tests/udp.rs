//! UDP with memcached's 8-byte framing (request id, sequence number, datagram count, reserved).

use std::net::UdpSocket;
use std::time::Duration;

use kv_tests::{udp_collect, udp_request, Server};

/// Sends a datagram with an arbitrary header.
fn send_raw(sock: &UdpSocket, server: std::net::SocketAddr, req_id: u16, seq: u16, total: u16, payload: &[u8]) {
    let mut pkt = Vec::new();
    for v in [req_id, seq, total, 0] {
        pkt.extend_from_slice(&v.to_be_bytes());
    }
    pkt.extend_from_slice(payload);
    sock.send_to(&pkt, server).unwrap();
}

/// Every datagram that arrives until `quiet` passes without one.
fn drain(sock: &UdpSocket, quiet: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn get_over_udp() {
    let s = Server::start(&[]);
    s.client().set("u1", b"abc");
    assert_eq!(udp_request(s.addr(), 0x1234, b"get u1\r\n"), b"VALUE u1 0 3\r\nabc\r\nEND\r\n");
    assert_eq!(udp_request(s.addr(), 0, b"get nothing\r\n"), b"END\r\n");
    assert_eq!(udp_request(s.addr(), 0xffff, b"mg u1 v\r\n"), b"VA 3\r\nabc\r\n");
    assert_eq!(udp_request(s.addr(), 7, b"bogus\r\n"), b"ERROR\r\n");
    let v = udp_request(s.addr(), 8, b"version\r\n");
    assert!(v.starts_with(b"VERSION ") && v.ends_with(b"\r\n"));
}

#[test]
fn set_over_udp_get_over_tcp() {
    let s = Server::start(&[]);
    assert_eq!(udp_request(s.addr(), 1, b"set us 5 0 4\r\nudp!\r\n"), b"STORED\r\n");
    s.client().expect(b"get us\r\n", b"VALUE us 5 4\r\nudp!\r\nEND\r\n");
    assert_eq!(udp_request(s.addr(), 2, b"delete us\r\n"), b"DELETED\r\n");
    s.client().expect(b"get us\r\n", b"END\r\n");
    // noreply over UDP: no datagram at all.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_raw(&sock, s.addr(), 3, 0, 1, b"set un 0 0 1 noreply\r\nx\r\n");
    assert!(drain(&sock, Duration::from_millis(300)).is_empty(), "reply to a noreply set");
    s.client().expect(b"get un\r\n", b"VALUE un 0 1\r\nx\r\nEND\r\n");
}

#[test]
fn large_reply_spans_datagrams() {
    let s = Server::start(&[]);
    let value: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    s.client().set("big5", &value);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_raw(&sock, s.addr(), 10, 0, 1, b"get big5\r\n");
    let dgrams = drain(&sock, Duration::from_millis(500));
    let mut want = b"VALUE big5 0 5000\r\n".to_vec();
    want.extend_from_slice(&value);
    want.extend_from_slice(b"\r\nEND\r\n");
    // 5026 bytes of reply in datagrams of at most 1400 bytes (8 of them header): 4 datagrams.
    assert_eq!(dgrams.len(), 4, "sizes {:?}", dgrams.iter().map(Vec::len).collect::<Vec<_>>());
    let mut parts = vec![None; 4];
    for d in &dgrams {
        assert!(d.len() <= 1400, "datagram of {} bytes", d.len());
        assert_eq!(&d[..2], &10u16.to_be_bytes(), "request id");
        assert_eq!(&d[4..8], &[0, 4, 0, 0], "total and reserved");
        let seq = u16::from_be_bytes([d[2], d[3]]) as usize;
        assert!(parts[seq].is_none(), "sequence {seq} twice");
        parts[seq] = Some(d[8..].to_vec());
    }
    let got: Vec<u8> = parts.into_iter().map(|p| p.expect("missing datagram")).collect::<Vec<_>>().concat();
    assert_eq!(got, want);
    // And through the harness' reassembly.
    assert_eq!(udp_request(s.addr(), 11, b"get big5\r\n"), want);
}

#[test]
fn multi_key_get_over_udp() {
    // memcached 1.6.18 sends each VALUE and the END in a datagram of its own, each numbered 0 of 1;
    // a server may as well number one reply across datagrams. The payloads, in arrival order, are
    // the same bytes either way.
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("m1", b"one");
    c.set("m2", b"two");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    send_raw(&sock, s.addr(), 77, 0, 1, b"get m1 nothing m2\r\n");
    let dgrams = drain(&sock, Duration::from_millis(300));
    let mut payload = Vec::new();
    for d in &dgrams {
        assert_eq!(&d[..2], &77u16.to_be_bytes());
        payload.extend_from_slice(&d[8..]);
    }
    assert_eq!(String::from_utf8_lossy(&payload), "VALUE m1 0 3\r\none\r\nVALUE m2 0 3\r\ntwo\r\nEND\r\n");
}

#[test]
fn frame_header_as_memcached() {
    // memcached 1.6 (1.6.18 and 1.6.38 alike) drops a request whose header announces another datagram
    // count than 1 without answering, and looks at neither the sequence number nor the reserved field:
    // those requests are served, the reply numbered 0 of 1.
    let s = Server::start(&[]);
    s.client().set("mp", b"v");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (id, seq, total) in [(21u16, 0u16, 2u16), (22, 1, 2), (23, 0, 0), (24, 0, 256)] {
        send_raw(&sock, s.addr(), id, seq, total, b"get mp\r\n");
        let dgrams = drain(&sock, Duration::from_millis(300));
        assert!(dgrams.is_empty(), "datagram {seq} of {total} answered: {dgrams:?}");
    }
    for (id, seq, reserved) in [(31u16, 1u16, 0u16), (32, 0xffff, 0), (33, 0, 7)] {
        let mut pkt = Vec::new();
        for v in [id, seq, 1, reserved] {
            pkt.extend_from_slice(&v.to_be_bytes());
        }
        pkt.extend_from_slice(b"get mp\r\n");
        sock.send_to(&pkt, s.addr()).unwrap();
        let dgrams = drain(&sock, Duration::from_millis(300));
        let mut want = id.to_be_bytes().to_vec();
        want.extend_from_slice(&[0, 0, 0, 1, 0, 0]);
        want.extend_from_slice(b"VALUE mp 0 1\r\nv\r\nEND\r\n");
        assert_eq!(dgrams, [want], "seq {seq}, reserved {reserved}");
    }
    // The server keeps serving UDP.
    assert_eq!(udp_request(s.addr(), 25, b"get mp\r\n"), b"VALUE mp 0 1\r\nv\r\nEND\r\n");
    let sock2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock2.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    send_raw(&sock2, s.addr(), 26, 0, 1, b"get mp\r\n");
    assert_eq!(udp_collect(&sock2, 26), b"VALUE mp 0 1\r\nv\r\nEND\r\n");
}

#[test]
fn runt_datagrams_are_ignored() {
    // Datagrams too short for a header get no reply and do no harm.
    let s = Server::start(&[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(b"\x00\x01", s.addr()).unwrap();
    sock.send_to(b"", s.addr()).unwrap();
    assert!(drain(&sock, Duration::from_millis(200)).is_empty());
    let v = udp_request(s.addr(), 5, b"version\r\n");
    assert!(v.starts_with(b"VERSION "));
}

#[test]
fn acknowledged_udp_sets_survive_a_crash() {
    // Sets sent back to back are read and answered in batches; each STORED leaves only once the journal
    // holds it durably (`--fsync always`), so a SIGKILL right after loses none of them.
    let mut s = Server::start(&["--fsync", "always"]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for id in 0..40u16 {
        send_raw(&sock, s.addr(), id, 0, 1, format!("set d{id} 0 0 2\r\n{:02}\r\n", id % 100).as_bytes());
    }
    let mut stored = 0;
    for _ in 0..40 {
        let mut buf = [0u8; 64];
        let (n, _) = sock.recv_from(&mut buf).expect("a reply to every set");
        assert_eq!(&buf[8..n], b"STORED\r\n");
        stored += 1;
    }
    assert_eq!(stored, 40);
    s.crash_and_restart();
    let mut c = s.client();
    for id in 0..40u16 {
        c.expect(
            format!("get d{id}\r\n").as_bytes(),
            format!("VALUE d{id} 0 2\r\n{:02}\r\nEND\r\n", id % 100).as_bytes(),
        );
    }
}
