//! Times on the tools' command line and in their output: RFC 3339, or unix seconds.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const NS: u64 = 1_000_000_000;

/// Parses `T` of `--since`/`--until`: RFC 3339 (`2025-06-01T12:00:00Z`, any offset, fractions allowed) or unix
/// seconds (`1748779200`, `1748779200.25`, or `@1748779200` as `date` writes it). Returns unix nanoseconds.
pub fn parse_time(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid time {s:?}: expected RFC 3339 (e.g. 2025-06-01T12:00:00Z) or unix seconds");
    let secs = s.strip_prefix('@').unwrap_or(s);
    if !secs.is_empty() && secs.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
        if whole.is_empty() || frac.len() > 9 || frac.contains('.') {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac: u64 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().map_err(|_| bad())? };
        return whole.checked_mul(NS).and_then(|w| w.checked_add(frac)).ok_or_else(bad);
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| bad())?;
    u64::try_from(t.unix_timestamp_nanos()).map_err(|_| format!("time {s:?} is before 1970"))
}

/// A stamp for people: RFC 3339 in UTC, or `None` for 0 (a record from a version 1 log: time unknown).
pub fn format_stamp(ns: u64) -> Option<String> {
    if ns == 0 {
        return None;
    }
    // Any u64 of nanoseconds (up to the year 2554) is a valid date, and formats.
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).ok()?;
    t.format(&Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_write() {
        assert_eq!(parse_time("1748779200"), Ok(1_748_779_200 * NS));
        assert_eq!(parse_time("@1748779200"), Ok(1_748_779_200 * NS));
        assert_eq!(parse_time("1748779200.25"), Ok(1_748_779_200 * NS + 250_000_000));
        assert_eq!(parse_time("2025-06-01T12:00:00Z"), Ok(1_748_779_200 * NS));
        assert_eq!(parse_time("2025-06-01T14:00:00+02:00"), Ok(1_748_779_200 * NS));
        assert_eq!(parse_time("2025-06-01T12:00:00.000000001Z"), Ok(1_748_779_200 * NS + 1));
        for bad in ["", "@", "yesterday", "1.2.3", ".5", "1.0000000001", "2025-06-01", "1969-12-31T23:59:59Z"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
        assert!(parse_time("99999999999999999999").is_err());
    }

    #[test]
    fn formats_utc_and_round_trips() {
        assert_eq!(format_stamp(0), None);
        assert_eq!(format_stamp(1_748_779_200 * NS).as_deref(), Some("2025-06-01T12:00:00Z"));
        let ns = 1_748_779_200 * NS + 123_456_789;
        assert_eq!(parse_time(&format_stamp(ns).unwrap()), Ok(ns));
        assert!(format_stamp(u64::MAX).is_some());
    }
}
