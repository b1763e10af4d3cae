//! The TCP ceiling's request handling: find line ends, answer each `get`/`gets` line with one fixed reply.
//!
//! The TCP analogue of the XDP_TX reflector: no store and no parsing beyond line ends and a line's first four bytes,
//! so what a server measures against it is the cost of the kernel's TCP path plus one read and one write.

/// The fixed reply: `VALUE <key> 0 <value_size>\r\n<value>\r\nEND\r\n` with a key of `key_len` bytes, the size of a
/// real hit's reply for keys and values of those sizes.
pub fn reply(key_len: usize, value_size: usize) -> Vec<u8> {
    let mut r = b"VALUE ".to_vec();
    r.extend(std::iter::repeat_n(b'k', key_len));
    r.extend_from_slice(format!(" 0 {value_size}\r\n").as_bytes());
    r.extend((0..value_size).map(crate::proto::value_byte));
    r.extend_from_slice(b"\r\nEND\r\n");
    r
}

const VERSION: &[u8] = b"VERSION tcp-ceiling\r\n";
const ERROR: &[u8] = b"ERROR\r\n";

/// Per-connection state between reads: the first bytes of the line not yet ended.
#[derive(Clone, Copy, Debug, Default)]
pub struct LineState {
    head: [u8; 4],
    len: u8,
}

impl LineState {
    fn take(&mut self, bytes: &[u8]) {
        let n = (4 - self.len as usize).min(bytes.len());
        self.head[self.len as usize..self.len as usize + n].copy_from_slice(&bytes[..n]);
        self.len += n as u8;
    }

    /// Appends the answer to every line `data` ends to `out`. Returns false on `quit` (close the connection).
    pub fn feed(&mut self, data: &[u8], get_reply: &[u8], out: &mut Vec<u8>) -> bool {
        let mut start = 0;
        while let Some(p) = data[start..].iter().position(|&b| b == b'\n') {
            self.take(&data[start..start + p]);
            let head = &self.head[..self.len as usize];
            self.len = 0;
            start += p + 1;
            if head == b"get " || head == b"gets" {
                out.extend_from_slice(get_reply);
            } else if head == b"vers" {
                out.extend_from_slice(VERSION);
            } else if head == b"quit" {
                return false;
            } else {
                out.extend_from_slice(ERROR);
            }
        }
        self.take(&data[start..]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{parse_tcp_reply, Outcome};

    #[test]
    fn reply_is_a_well_formed_hit_of_the_given_size() {
        let r = reply(7, 32);
        assert_eq!(r.len(), "VALUE key:123 0 32\r\n".len() + 32 + "\r\nEND\r\n".len());
        assert_eq!(parse_tcp_reply(&r), Ok(Some((r.len(), Outcome::Hit))));
        assert!(r.starts_with(b"VALUE kkkkkkk 0 32\r\nabc"));
    }

    #[test]
    fn answers_each_line_however_the_stream_is_cut() {
        let stream = b"get key:1\r\ngets a b\r\nversion\r\nset x 0 0 1\r\nget key:22\r\n";
        let want: Vec<u8> = [&b"R"[..], b"R", VERSION, ERROR, b"R"].concat();
        for cut in 1..stream.len() {
            let mut st = LineState::default();
            let mut out = Vec::new();
            for piece in stream.chunks(cut) {
                assert!(st.feed(piece, b"R", &mut out));
            }
            assert_eq!(out, want, "pieces of {cut}");
        }
        // A short line ("ge\r\n") is not a get; quit closes.
        let mut st = LineState::default();
        let mut out = Vec::new();
        assert!(st.feed(b"ge\r\n\r\n", b"R", &mut out));
        assert_eq!(out, [ERROR, ERROR].concat());
        assert!(!st.feed(b"quit\r\n", b"R", &mut out));
    }
}
