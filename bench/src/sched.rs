//! Open-loop schedule: intended send times evenly spaced at the total offered rate, interleaved across streams
//! (thread x socket/connection) so the union of all streams is evenly spaced too.

#[derive(Clone, Debug)]
pub struct Schedule {
    start_ns: u64,
    stream: u64,
    streams: u64,
    /// Nanoseconds between consecutive requests of the whole run (all streams).
    gap_ns: f64,
    /// Index (within this stream) of the next request to send.
    pub next: u64,
}

impl Schedule {
    /// Stream `stream` of `streams`, at `total_rate` requests/s overall, starting at `start_ns`.
    pub fn new(start_ns: u64, total_rate: f64, stream: u64, streams: u64) -> Self {
        assert!(total_rate > 0.0 && stream < streams);
        Schedule { start_ns, stream, streams, gap_ns: 1e9 / total_rate, next: 0 }
    }

    /// Intended send time of this stream's `i`-th request.
    pub fn at(&self, i: u64) -> u64 {
        self.start_ns + (((i * self.streams + self.stream) as f64) * self.gap_ns) as u64
    }

    /// Intended time of the next request to send.
    pub fn next_at(&self) -> u64 {
        self.at(self.next)
    }

    pub fn due(&self, now_ns: u64) -> bool {
        self.next_at() <= now_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stream_is_evenly_spaced() {
        let s = Schedule::new(1_000, 20_000.0, 0, 1);
        for i in 0..1000 {
            assert_eq!(s.at(i), 1_000 + i * 50_000);
        }
    }

    #[test]
    fn interleaved_streams_union_is_evenly_spaced_at_total_rate() {
        let streams = 8u64;
        let rate = 100_000.0; // 10 us apart overall
        let all: Vec<Schedule> = (0..streams).map(|k| Schedule::new(0, rate, k, streams)).collect();
        let mut times: Vec<u64> = all.iter().flat_map(|s| (0..100).map(move |i| s.at(i))).collect();
        times.sort_unstable();
        for (n, w) in times.windows(2).enumerate() {
            let gap = w[1] - w[0];
            assert!((9_999..=10_001).contains(&gap), "gap {gap} at {n}");
        }
        // Each stream alone runs at rate / streams.
        assert_eq!(all[3].at(1) - all[3].at(0), 80_000);
    }

    #[test]
    fn catch_up_keeps_intended_times() {
        let mut s = Schedule::new(0, 1000.0, 0, 1); // 1 ms apart
                                                    // Far behind: everything up to now is due, and intended times do not shift.
        let now = 10_500_000;
        let mut sent = Vec::new();
        while s.due(now) {
            sent.push(s.next_at());
            s.next += 1;
        }
        assert_eq!(sent.len(), 11);
        assert_eq!(sent[10], 10_000_000);
        assert_eq!(s.next_at(), 11_000_000);
    }
}
