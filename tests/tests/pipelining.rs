//! Many requests in one write, one request over many writes: replies stay exact and in order.

use std::io::Write as _;
use std::time::Duration;

use kv_tests::Server;

#[test]
fn hundred_commands_in_one_write() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let mut req = Vec::new();
    let mut want = Vec::new();
    for i in 0..100 {
        match i % 4 {
            0 => {
                req.extend_from_slice(format!("set p{i} {i} 0 {}\r\nval{i}\r\n", format!("val{i}").len()).as_bytes());
                want.extend_from_slice(b"STORED\r\n");
            }
            1 => {
                let k = i - 1;
                req.extend_from_slice(format!("get p{k}\r\n").as_bytes());
                want.extend_from_slice(
                    format!("VALUE p{k} {k} {}\r\nval{k}\r\nEND\r\n", format!("val{k}").len()).as_bytes(),
                );
            }
            2 => {
                req.extend_from_slice(format!("incr p{} 1\r\n", i - 2).as_bytes());
                want.extend_from_slice(b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
            }
            _ => {
                req.extend_from_slice(format!("delete p{i}\r\n").as_bytes());
                want.extend_from_slice(b"NOT_FOUND\r\n");
            }
        }
    }
    c.expect(&req, &want);
}

#[test]
fn pipelined_sets_and_gets() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let mut req = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        let v = "x".repeat(i * 7 % 300);
        req.extend_from_slice(format!("set m{i} 0 0 {}\r\n{v}\r\nget m{i}\r\n", v.len()).as_bytes());
        want.extend_from_slice(format!("STORED\r\nVALUE m{i} 0 {}\r\n{v}\r\nEND\r\n", v.len()).as_bytes());
    }
    req.extend_from_slice(b"get m0 m1 m2\r\nmn\r\n");
    want.extend_from_slice(
        b"VALUE m0 0 0\r\n\r\nVALUE m1 0 7\r\nxxxxxxx\r\nVALUE m2 0 14\r\nxxxxxxxxxxxxxx\r\nEND\r\nMN\r\n",
    );
    // Write from another thread so a server that replies while we still write cannot deadlock us.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&req).unwrap());
    let got = c.read_n(want.len());
    writer.join().unwrap();
    assert!(got == want, "pipelined replies differ");
    c.assert_silent(Duration::from_millis(30));
}

#[test]
fn one_byte_at_a_time() {
    let s = Server::start(&[]);
    let mut c = s.client();
    let req = b"set tiny 42 0 10\r\n0123\r\n6789\r\nget tiny\r\nmg tiny v f\r\nincr nokey 1\r\n";
    for b in req.iter() {
        c.send(&[*b]);
        std::thread::sleep(Duration::from_micros(300));
    }
    let want = b"STORED\r\nVALUE tiny 42 10\r\n0123\r\n6789\r\nEND\r\nVA 10 f42\r\n0123\r\n6789\r\nNOT_FOUND\r\n";
    let got = c.read_n(want.len());
    assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
    c.assert_silent(Duration::from_millis(30));
}

#[test]
fn split_at_every_position() {
    // Each request split in two at every byte offset, with a pause in between.
    let s = Server::start(&[]);
    let mut c = s.client();
    let req = b"set sp 0 0 4\r\na\r\nb\r\n";
    for cut in 1..req.len() {
        c.send(&req[..cut]);
        std::thread::sleep(Duration::from_millis(2));
        c.send(&req[cut..]);
        assert_eq!(c.line(), "STORED\r\n", "cut at {cut}");
    }
    c.expect(b"get sp\r\n", b"VALUE sp 0 4\r\na\r\nb\r\nEND\r\n");
}
