//! `--repeat`: the rounds of one workload reduced to one row per server, its median round by req/s (a
//! real run, so that its latencies and CPU figures belong together), with every round's req/s and BPF
//! ns/pkt in its notes and the median of the BPF figures in place of the run's own.

use serde_json::json;

use super::{Row, Server};

/// One row per server of `servers` (in that order) from all the rounds' rows in `runs`.
pub fn medians(runs: Vec<Row>, servers: &[Server]) -> Vec<Row> {
    let mut runs: Vec<Option<Row>> = runs.into_iter().map(Some).collect();
    servers
        .iter()
        .filter_map(|&server| {
            let mine: Vec<Row> = runs
                .iter_mut()
                .filter(|r| r.as_ref().is_some_and(|r| r.server == server))
                .filter_map(Option::take)
                .collect();
            median_row(mine)
        })
        .collect()
}

/// The median of one server's measured rounds (the lower middle one for an even count); where none was
/// measured, the first round's skipped row as it is (its note says why), None without rounds.
fn median_row(mut rows: Vec<Row>) -> Option<Row> {
    if !rows.iter().any(|r| r.load.is_some()) {
        return rows.into_iter().next();
    }
    rows.retain(|r| r.load.is_some());
    let rps: Vec<f64> = rows.iter().map(|r| r.rps).collect();
    let bpf: Vec<f64> = rows.iter().filter_map(|r| r.extra.get("bpf_ns_per_run")?.as_f64()).collect();
    rows.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let n = rows.len();
    let mut row = rows.swap_remove((n - 1) / 2);
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ");
    let mut notes = vec![format!("median of {n} rounds by req/s ({})", list(&rps))];
    if !bpf.is_empty() {
        let m = median(&bpf);
        row.extra.insert("bpf_ns_per_run".into(), json!(m));
        notes.push(format!("BPF median {m:.0} ns/pkt ({})", list(&bpf)));
    }
    // The run's own BPF figure gives way to the median above.
    notes.extend(row.note.split("; ").filter(|s| !s.is_empty() && !s.starts_with("BPF ")).map(str::to_string));
    row.note = notes.join("; ");
    row.extra.insert("rounds_rps".into(), json!(rps));
    row.extra.insert("rounds_bpf_ns_per_run".into(), json!(bpf));
    Some(row)
}

/// The median of a non-empty list (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(server: Server, rps: f64, bpf: Option<f64>) -> Row {
        let mut extra = serde_json::Map::new();
        if let Some(b) = bpf {
            extra.insert("bpf_ns_per_run".into(), json!(b));
        }
        Row {
            server,
            workload: "udp-get".into(),
            load: Some(json!({ "rps": rps })),
            rps,
            server_cpu_us: None,
            all_cpu_us: None,
            rss_mb: None,
            rss_peak_mb: None,
            extra,
            note: format!("XDP answered 99%; BPF {} ns/pkt (separate run, stats on)", bpf.unwrap_or(0.0)),
        }
    }

    #[test]
    fn each_server_gets_its_median_round_and_the_median_bpf_time() {
        let runs = vec![
            row(Server::KvXdp, 300.0, Some(500.0)),
            row(Server::KvXdpBaseline, 250.0, Some(700.0)),
            row(Server::KvXdp, 100.0, Some(400.0)),
            row(Server::KvXdpBaseline, 260.0, Some(650.0)),
            row(Server::KvXdp, 200.0, Some(450.0)),
            row(Server::KvXdpBaseline, 240.0, Some(600.0)),
            row(Server::KvXdp, 400.0, Some(410.0)),
        ];
        let m = medians(runs, &[Server::KvXdp, Server::KvXdpBaseline, Server::Memcached]);
        assert_eq!(m.len(), 2, "no row for a server without rounds");
        assert_eq!((m[0].server, m[0].rps), (Server::KvXdp, 200.0), "lower middle of 100, 200, 300, 400");
        assert_eq!(m[0].extra["bpf_ns_per_run"], json!(430.0), "mean of the middle two of 400, 410, 450, 500");
        assert_eq!(
            m[0].note,
            "median of 4 rounds by req/s (300, 100, 200, 400); BPF median 430 ns/pkt (500, 400, 450, 410); XDP answered 99%"
        );
        assert_eq!((m[1].server, m[1].rps), (Server::KvXdpBaseline, 250.0));
        assert_eq!(m[1].extra["bpf_ns_per_run"], json!(650.0));
        assert_eq!(m[1].extra["rounds_rps"], json!([250.0, 260.0, 240.0]));
    }

    #[test]
    fn skipped_rounds_do_not_count() {
        let mut skipped = row(Server::KvXdp, 0.0, None);
        skipped.load = None;
        let m = medians(vec![skipped, row(Server::KvXdp, 5.0, None)], &[Server::KvXdp]);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].rps, 5.0);
        assert!(m[0].note.starts_with("median of 1 rounds by req/s (5)"), "{}", m[0].note);
    }

    #[test]
    fn a_server_skipped_in_every_round_keeps_its_skipped_row() {
        let skipped = |note: &str| {
            let mut r = row(Server::KvNoBpf, 0.0, None);
            r.load = None;
            r.note = note.into();
            r
        };
        let m = medians(vec![skipped("needs 51100 fds"), skipped("needs 51100 fds")], &[Server::KvNoBpf]);
        assert_eq!(m.len(), 1, "the skip is reported, not dropped");
        assert!(m[0].load.is_none());
        assert_eq!(m[0].note, "needs 51100 fds");
    }
}
