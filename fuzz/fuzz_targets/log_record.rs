//! `persist::decode`, the recovery scan's record decoder, on arbitrary bytes: walks records as the
//! scan does. Every accepted record must re-encode to exactly its bytes (so the CRC covered all of
//! it); a corrupted copy of an accepted record must never decode to something else.
#![no_main]

use kv_user::persist::{decode, encode, Decoded, MAX_BODY_LEN, RECORD_HEADER_LEN, STAMP_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    let mut reencoded = Vec::new();
    while at < data.len() {
        let rest = &data[at..];
        match decode(rest) {
            Decoded::Ok(entry, n) => {
                let rec = entry.rec;
                let frame = RECORD_HEADER_LEN + STAMP_LEN;
                assert!(n >= frame && n <= rest.len() && n - frame <= MAX_BODY_LEN);
                reencoded.clear();
                encode(&rec, entry.stamp_ns, &mut reencoded).expect("a decoded record must be encodable");
                assert_eq!(reencoded, &rest[..n], "{rec:?} re-encodes differently");
                // Every truncation is torn, not another record.
                let cut = usize::from(rest[0]) % n;
                assert_eq!(decode(&rest[..cut]), Decoded::Incomplete, "{rec:?} cut at {cut}");
                // A flipped bit past the length field is always caught by the CRC.
                let mut bad = rest[..n].to_vec();
                let bit = usize::from(rest[4]) % ((n - 4) * 8);
                bad[4 + bit / 8] ^= 1 << (bit % 8);
                assert!(matches!(decode(&bad), Decoded::Corrupt(_)), "{rec:?}: flip of bit {bit} accepted");
                at += n;
            }
            Decoded::Incomplete => {
                // Only a buffer shorter than the record its header announces is torn.
                if rest.len() >= RECORD_HEADER_LEN {
                    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                    assert!(rest.len() < RECORD_HEADER_LEN + len + STAMP_LEN, "complete record reported torn");
                }
                return;
            }
            Decoded::Corrupt(_) => return,
        }
    }
});
