//! Reading a log front to back: the one loop over its records, shared by replay and the log tools. Reads in
//! chunks, so memory stays bounded by the largest record actually present.

use std::io::{self, Read};

use super::format::{decode_as, frame_len, Decoded, Entry, Version, FILE_HEADER_LEN, MAX_BODY_LEN, STAMP_LEN};
use super::{IO_CHUNK, RECORD_HEADER_LEN};

/// Why a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At the end of the file, on a record boundary: the log is sound.
    Clean,
    /// The file ends inside a record (a torn write, or a damaged length field): `bytes` from the stop on.
    Torn { bytes: u64 },
    /// The record at the stop is not valid; nothing after it can be trusted (there is no resync marker).
    Corrupt(&'static str),
}

/// Records of one log file, in order, with their offsets.
pub struct Walk<R> {
    src: R,
    version: Version,
    buf: Vec<u8>,
    /// `buf[start..]` is not consumed yet; it starts at file offset `offset`.
    start: usize,
    offset: u64,
    eof: bool,
    end: Option<End>,
}

impl<R: Read> Walk<R> {
    /// `src` is positioned right after the file header of a `version` log.
    pub fn new(src: R, version: Version) -> Walk<R> {
        Walk { src, version, buf: Vec::new(), start: 0, offset: FILE_HEADER_LEN as u64, eof: false, end: None }
    }

    /// The next record: its offset in the file, the record, and its length. `Ok(None)` once the walk has ended
    /// ([`Walk::end`] says why; [`Walk::offset`] is then where the valid part of the log ends).
    pub fn next(&mut self) -> io::Result<Option<(u64, Entry<'_>, usize)>> {
        if self.end.is_some() {
            return Ok(None);
        }
        loop {
            let rest = &self.buf[self.start..];
            // A length over the limit is corruption: no point reading up to it.
            let need_more = match frame_len(self.version, rest) {
                None => true,
                Some(n) => n <= RECORD_HEADER_LEN + MAX_BODY_LEN + STAMP_LEN && rest.len() < n,
            };
            if !need_more || self.eof {
                break;
            }
            self.fill()?;
        }
        let at = self.offset;
        let rest = &self.buf[self.start..];
        match decode_as(self.version, rest) {
            Decoded::Ok(entry, n) => {
                self.start += n;
                self.offset += n as u64;
                Ok(Some((at, entry, n)))
            }
            Decoded::Incomplete => {
                // Only at EOF (the loop above reads until a record is whole or the file ends).
                let bytes = rest.len() as u64;
                self.end = Some(if bytes == 0 { End::Clean } else { End::Torn { bytes } });
                Ok(None)
            }
            Decoded::Corrupt(why) => {
                self.end = Some(End::Corrupt(why));
                Ok(None)
            }
        }
    }

    /// Offset of the next record: once the walk has ended, the end of the valid part of the log.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Why the walk ended; `None` while it has not.
    pub fn end(&self) -> Option<End> {
        self.end
    }

    fn fill(&mut self) -> io::Result<()> {
        self.buf.drain(..self.start);
        self.start = 0;
        let have = self.buf.len();
        self.buf.resize(have + IO_CHUNK, 0);
        let n = loop {
            match self.src.read(&mut self.buf[have..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = n.inspect_err(|_| self.buf.truncate(have))?;
        self.buf.truncate(have + n);
        self.eof = n == 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::format::encode;
    use crate::record::Record;

    fn log_bytes(n: usize, value_len: usize) -> Vec<u8> {
        let mut v = Vec::new();
        let value = vec![7u8; value_len];
        for i in 0..n {
            let key = format!("k{i}");
            let rec = Record::Set { key: key.as_bytes(), flags: 0, exptime: 0, cas: i as u64, time: 0, value: &value };
            encode(&rec, 1000 + i as u64, &mut v).unwrap();
        }
        v
    }

    fn walk_all(bytes: &[u8]) -> (Vec<(u64, u64)>, u64, End) {
        let mut w = Walk::new(bytes, Version::V2);
        let mut got = Vec::new();
        while let Some((at, e, _)) = w.next().unwrap() {
            got.push((at, e.stamp_ns));
        }
        (got, w.offset(), w.end().unwrap())
    }

    #[test]
    fn walks_records_across_chunk_boundaries() {
        // Records of ~300 KB: several straddle the 1 MiB reads.
        let bytes = log_bytes(9, 300_000);
        let (got, end_at, end) = walk_all(&bytes);
        assert_eq!(end, End::Clean);
        assert_eq!(got.len(), 9);
        assert_eq!(got[0], (FILE_HEADER_LEN as u64, 1000));
        assert_eq!(end_at, (FILE_HEADER_LEN + bytes.len()) as u64);
    }

    #[test]
    fn torn_and_corrupt_ends() {
        let bytes = log_bytes(3, 10);
        let (_, full, _) = walk_all(&bytes);
        let (got, at, end) = walk_all(&bytes[..bytes.len() - 3]);
        assert_eq!(got.len(), 2);
        assert_eq!(end, End::Torn { bytes: full - at - 3 });
        let mut bad = bytes.clone();
        bad[20] ^= 4;
        let (got, at, end) = walk_all(&bad);
        assert!(got.is_empty() && at == FILE_HEADER_LEN as u64);
        assert_eq!(end, End::Corrupt("crc mismatch"));
    }
}
