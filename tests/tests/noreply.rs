//! `noreply`: the server sends nothing at all, so the reply to the next command is the very next
//! bytes on the connection.

use kv_tests::{Client, Server};

/// Sends `req` (with noreply) followed by `mn`, and asserts the only reply is `MN`.
#[track_caller]
fn silent(c: &mut Client, req: &[u8]) {
    let mut r = req.to_vec();
    r.extend_from_slice(b"mn\r\n");
    c.expect(&r, b"MN\r\n");
}

#[test]
fn storage_commands_noreply() {
    let s = Server::start(&[]);
    let mut c = s.client();
    silent(&mut c, b"set a 1 0 1 noreply\r\nx\r\n");
    silent(&mut c, b"add a 0 0 1 noreply\r\ny\r\n"); // NOT_STORED, silently
    silent(&mut c, b"add b 2 0 1 noreply\r\nb\r\n");
    silent(&mut c, b"replace a 0 0 1 noreply\r\nz\r\n");
    silent(&mut c, b"replace nokey 0 0 1 noreply\r\nz\r\n"); // NOT_STORED
    silent(&mut c, b"append a 0 0 1 noreply\r\n>\r\n");
    silent(&mut c, b"prepend a 0 0 1 noreply\r\n<\r\n");
    silent(&mut c, b"append nokey 0 0 1 noreply\r\n>\r\n");
    silent(&mut c, b"prepend nokey 0 0 1 noreply\r\n<\r\n");
    c.expect(b"get a b nokey\r\n", b"VALUE a 0 3\r\n<z>\r\nVALUE b 2 1\r\nb\r\nEND\r\n");
    c.send(b"gets a\r\n");
    let header = c.line();
    let cas: u64 = header.trim_end().rsplit(' ').next().unwrap().parse().unwrap();
    c.read_until(b"END\r\n");
    silent(&mut c, format!("cas a 0 0 1 {} noreply\r\nX\r\n", cas + 1000).as_bytes()); // EXISTS
    silent(&mut c, b"cas nokey 0 0 1 1 noreply\r\nX\r\n"); // NOT_FOUND
    c.expect(b"get a\r\n", b"VALUE a 0 3\r\n<z>\r\nEND\r\n");
    silent(&mut c, format!("cas a 5 0 1 {cas} noreply\r\nC\r\n").as_bytes()); // STORED
    c.expect(b"get a nokey\r\n", b"VALUE a 5 1\r\nC\r\nEND\r\n");
}

#[test]
fn other_commands_noreply() {
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("n", b"10");
    silent(&mut c, b"incr n 5 noreply\r\n");
    silent(&mut c, b"decr n 3 noreply\r\n");
    silent(&mut c, b"incr nokey 1 noreply\r\n");
    silent(&mut c, b"decr nokey 1 noreply\r\n");
    c.expect(b"get n\r\n", b"VALUE n 0 2\r\n12\r\nEND\r\n");
    silent(&mut c, b"touch n 100 noreply\r\n");
    silent(&mut c, b"touch nokey 100 noreply\r\n");
    silent(&mut c, b"verbosity 1 noreply\r\n");
    silent(&mut c, b"delete n noreply\r\n");
    silent(&mut c, b"delete n noreply\r\n"); // NOT_FOUND
    c.expect(b"get n\r\n", b"END\r\n");
    c.set("f", b"v");
    silent(&mut c, b"flush_all noreply\r\n");
    c.expect(b"get f\r\n", b"END\r\n");
    c.set("f", b"v");
    silent(&mut c, b"flush_all 0 noreply\r\n");
    c.expect(b"get f\r\n", b"END\r\n");
}

#[test]
fn errors_are_silenced_too() {
    // memcached suppresses every reply of a noreply command, errors included.
    let s = Server::start(&[]);
    let mut c = s.client();
    c.set("s", b"abc");
    silent(&mut c, b"incr s 1 noreply\r\n");
    c.expect(b"get s\r\n", b"VALUE s 0 3\r\nabc\r\nEND\r\n");
}

#[test]
fn noreply_followed_by_get() {
    // The same, with a plain get as the probe, everything in one write.
    let s = Server::start(&[]);
    let mut c = s.client();
    c.expect(
        b"set k1 0 0 2 noreply\r\nv1\r\nset k2 0 0 2 noreply\r\nv2\r\ndelete k1 noreply\r\nget k1 k2\r\n",
        b"VALUE k2 0 2\r\nv2\r\nEND\r\n",
    );
}
