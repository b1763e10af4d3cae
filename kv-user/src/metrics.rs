//! `--metrics-addr`: `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! The values, kinds and help texts come from [`crate::stats::general_numbers`] and its table, the same
//! ones the `stats` command prints, so a scrape and `stats` can never disagree. Naming: `kv_` + the
//! memcached stat name, `_total` on counters; the kernel path's `xdp_pass_<reason>` lines become one
//! family, `kv_xdp_passes_total{reason}`.
//!
//! The HTTP side is a hand-written HTTP/1.1 responder: one request per connection, then close, with a
//! deadline on reading the request and on writing the answer. A scrape endpoint needs nothing more,
//! and it keeps an HTTP stack out of the server's dependencies (hyper would bring its own read
//! timeout, but no bound on connections, and more code than it would remove here).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::exec::Ctx;
pub use crate::stats::Kind;
use crate::stats::{describe, Desc, Sources};

/// The `# TYPE` word.
fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
    }
}

/// One sample; samples sharing a name form a family (one HELP/TYPE header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: Kind,
    pub help: String,
    pub labels: Vec<(&'static str, String)>,
    pub value: u64,
}

pub const PREFIX: &str = "kv_";

/// Extra-source lines `<prefix><label value>` exported as one labelled family: (prefix, family, label,
/// help).
const FAMILIES: &[(&str, &str, &str, &str)] =
    &[("xdp_pass_", "xdp_passes_total", "reason", "Packets the XDP program left to user space, by reason.")];

/// The metric for one general `stats` line, described by the stats table.
pub fn metric(d: &Desc<'_>, value: u64) -> Metric {
    for &(prefix, family, label, help) in FAMILIES {
        if let Some(v) = d.name.strip_prefix(prefix) {
            return Metric {
                name: format!("{PREFIX}{family}"),
                kind: Kind::Counter,
                help: help.into(),
                labels: vec![(label, v.to_string())],
                value,
            };
        }
    }
    let name = match d.kind {
        Kind::Counter => format!("{PREFIX}{}_total", d.name),
        Kind::Gauge => format!("{PREFIX}{}", d.name),
    };
    let help = d.help.map_or_else(|| format!("memcached `stats` field {}.", d.name), str::to_string);
    Metric { name, kind: d.kind, help, labels: Vec::new(), value }
}

/// The metric for the general `stats` line `stat`.
pub fn metric_for(stat: &str, value: u64) -> Metric {
    metric(&describe(stat), value)
}

/// Everything `/metrics` reports, read from the sources `stats` prints.
pub fn gather(src: &Sources<'_>) -> Vec<Metric> {
    let mut out = vec![Metric {
        name: format!("{PREFIX}uptime_seconds"),
        kind: Kind::Gauge,
        help: "Seconds since the server started.".into(),
        labels: Vec::new(),
        value: src.counters.uptime(),
    }];
    crate::stats::general_numbers(src, &mut |d, v| out.push(metric(d, v)));
    out
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The text exposition: each family once (in first-seen order) with its HELP and TYPE lines, then its
/// samples.
pub fn render(metrics: &[Metric]) -> String {
    let mut out = String::with_capacity(metrics.len() * 96);
    let mut done: Vec<&str> = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        if done.contains(&m.name.as_str()) {
            continue;
        }
        done.push(&m.name);
        out.push_str("# HELP ");
        out.push_str(&m.name);
        out.push(' ');
        escape_help(&m.help, &mut out);
        let _ = write!(out, "\n# TYPE {} {}\n", m.name, type_name(m.kind));
        for s in metrics[i..].iter().filter(|s| s.name == m.name) {
            out.push_str(&s.name);
            if !s.labels.is_empty() {
                out.push('{');
                for (j, (k, v)) in s.labels.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_label(v, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

/// What to answer to a request head (request line and headers, without the blank line); None when the
/// head never ended within the size limit or the connection closed early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

pub fn route(head: Option<&[u8]>) -> Route {
    let Some(head) = head else { return Route::BadRequest };
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else { return Route::BadRequest };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => Route::Metrics { head_only: method == "HEAD" },
        ("GET" | "HEAD", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

/// Requests larger than this are refused: a scrape request is a few hundred bytes.
const MAX_HEAD: usize = 8192;
/// Exchanges at once.
const SLOTS: usize = 64;
/// Connections that may wait for a slot on top of those; more are closed unanswered (a scraper retries).
const WAITING: usize = 64;
/// The request head must arrive within this (a scraper sends it at once), so a client that trickles or
/// sends nothing gives its slot back soon; one waiting for a slot waits at most twice this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Writing the response (to a client that does not read) must finish within this.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until `stop` changes; runs on the acceptor's runtime (the workers never see scrapes).
///
/// Slow clients cannot starve scrapes: each holds a slot for at most [`HEAD_TIMEOUT`] before its
/// request is complete, and slots are handed out first come, first served, so a scrape arriving while
/// all are taken gets the next free one.
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(SLOTS));
    // Connections accepted and not yet finished, with or without a slot.
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("metrics accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if open.load(Relaxed) >= SLOTS + WAITING {
            continue;
        }
        open.fetch_add(1, Relaxed);
        let (ctx, slots, open) = (ctx.clone(), slots.clone(), open.clone());
        tokio::spawn(async move {
            if let Ok(Ok(_slot)) = tokio::time::timeout(2 * HEAD_TIMEOUT, slots.acquire()).await {
                if let Err(e) = exchange(stream, &ctx).await {
                    log::debug!("metrics request: {e}");
                }
            }
            open.fetch_sub(1, Relaxed);
        });
    }
}

/// Where the request head ends: at its first empty line, ended by CRLF or by a bare LF (RFC 9112
/// section 2.2 lets a recipient accept a bare LF as a line end). The index of the LF ending the last
/// header line.
fn head_end(buf: &[u8]) -> Option<usize> {
    let lf = |i: usize| buf.get(i) == Some(&b'\n');
    (0..buf.len()).find(|&i| lf(i) && (lf(i + 1) || (buf.get(i + 1) == Some(&b'\r') && lf(i + 2))))
}

/// Reads the request head: Some(its length), or None when it did not end within [`MAX_HEAD`] or the
/// client closed first (and sent something).
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = head_end(buf) {
            return Ok(Some(i));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() { Err(std::io::ErrorKind::UnexpectedEof.into()) } else { Ok(None) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn exchange(mut s: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let head_len = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut s, &mut buf)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let (status, body, head_only) = match route(head_len.map(|i| &buf[..i])) {
        Route::Metrics { head_only } => ("200 OK", render(&gather(&ctx.stat_sources())), head_only),
        Route::NotFound => ("404 Not Found", "not found; try /metrics\n".to_string(), false),
        Route::MethodNotAllowed => ("405 Method Not Allowed", "only GET\n".to_string(), false),
        Route::BadRequest => ("400 Bad Request", "bad request\n".to_string(), false),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        resp.push_str(&body);
    }
    let write = async {
        s.write_all(resp.as_bytes()).await?;
        s.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_gauges_do_not() {
        let m = metric_for("cmd_get", 5);
        assert_eq!((m.name.as_str(), m.kind, m.value), ("kv_cmd_get_total", Kind::Counter, 5));
        let m = metric_for("curr_items", 3);
        assert_eq!((m.name.as_str(), m.kind), ("kv_curr_items", Kind::Gauge));
        assert_eq!(metric_for("bytes", 1).name, "kv_bytes");
        assert_eq!(metric_for("xdp_hits", 1).name, "kv_xdp_hits_total");
        assert_eq!(metric_for("kcache_invalidations", 1).name, "kv_kcache_invalidations_total");
        let m = metric_for("xdp_pass_miss", 7);
        assert_eq!(m.name, "kv_xdp_passes_total");
        assert_eq!(m.labels, vec![("reason", "miss".to_string())]);
    }

    #[test]
    fn one_header_per_family_and_labelled_samples() {
        let ms = [
            metric_for("cmd_get", 2),
            metric_for("xdp_pass_miss", 3),
            metric_for("curr_items", 1),
            metric_for("xdp_pass_not_get", 4),
        ];
        let text = render(&ms);
        assert_eq!(
            text,
            "# HELP kv_cmd_get_total Keys requested by get commands.\n# TYPE kv_cmd_get_total counter\n\
             kv_cmd_get_total 2\n\
             # HELP kv_xdp_passes_total Packets the XDP program left to user space, by reason.\n\
             # TYPE kv_xdp_passes_total counter\n\
             kv_xdp_passes_total{reason=\"miss\"} 3\nkv_xdp_passes_total{reason=\"not_get\"} 4\n\
             # HELP kv_curr_items Items stored.\n# TYPE kv_curr_items gauge\nkv_curr_items 1\n"
        );
    }

    /// The exposition of every kind of line, as it was before the stats table (help texts, `_total`,
    /// the default help, the labelled xdp_pass family, the extra source after the table's lines).
    #[test]
    fn gathered_exposition() {
        use crate::stats::{Settings, Source, Stats};
        let line = |name, help| Desc { name, kind: Kind::Counter, help };
        use crate::store::ItemCounters;
        struct Kernel(Vec<(Desc<'static>, u64)>);
        impl Source for Kernel {
            fn stats(&self, add: &mut dyn FnMut(&Desc<'_>, u64)) {
                for (d, v) in &self.0 {
                    add(d, *v);
                }
            }
        }
        let kernel = Kernel(vec![
            (line("xdp_packets", Some("Packets the XDP program looked at.")), 9),
            (line("xdp_pass_miss", None), 3),
            (line("xdp_hit_keys", Some("Keys answered from the kernel cache.")), 2),
            (line("xdp_pass_not_get", None), 4),
            (line("kcache_flushes", Some("Whole kernel cache flushes.")), 1),
            (line("xdp_other", None), 5),
        ]);
        let counters = Stats::new();
        counters.get_hits.fetch_add(6, Relaxed);
        let store = ItemCounters { curr_items: 2, total_items: 8, ..ItemCounters::default() };
        let settings = Settings { max_connections: 1024, threads: 4, limit_maxbytes: 0 };
        let src = Sources { counters: &counters, store, settings, log: None, extra: Some(&kernel) };
        let metrics = gather(&src);
        assert_eq!(metrics[0].name, "kv_uptime_seconds");
        assert_eq!(metrics.len(), 1 + crate::stats::GENERAL.len() + 6);
        let text = render(&metrics);
        for part in [
            "# HELP kv_uptime_seconds Seconds since the server started.\n# TYPE kv_uptime_seconds gauge\n",
            "# HELP kv_max_connections memcached `stats` field max_connections.\n\
             # TYPE kv_max_connections gauge\nkv_max_connections 1024\n",
            "# HELP kv_get_hits_total Keys requested and found.\n# TYPE kv_get_hits_total counter\nkv_get_hits_total 6\n",
            "# HELP kv_total_items_total memcached `stats` field total_items.\n\
             # TYPE kv_total_items_total counter\nkv_total_items_total 8\n",
            "# HELP kv_curr_items Items stored.\n# TYPE kv_curr_items gauge\nkv_curr_items 2\n",
            "# HELP kv_reclaimed_total memcached `stats` field reclaimed.\n# TYPE kv_reclaimed_total counter\n\
             kv_reclaimed_total 0\n\
             # HELP kv_xdp_packets_total Packets the XDP program looked at.\n# TYPE kv_xdp_packets_total counter\n\
             kv_xdp_packets_total 9\n\
             # HELP kv_xdp_passes_total Packets the XDP program left to user space, by reason.\n\
             # TYPE kv_xdp_passes_total counter\n\
             kv_xdp_passes_total{reason=\"miss\"} 3\nkv_xdp_passes_total{reason=\"not_get\"} 4\n\
             # HELP kv_xdp_hit_keys_total Keys answered from the kernel cache.\n# TYPE kv_xdp_hit_keys_total counter\n\
             kv_xdp_hit_keys_total 2\n\
             # HELP kv_kcache_flushes_total Whole kernel cache flushes.\n# TYPE kv_kcache_flushes_total counter\n\
             kv_kcache_flushes_total 1\n\
             # HELP kv_xdp_other_total memcached `stats` field xdp_other.\n# TYPE kv_xdp_other_total counter\n\
             kv_xdp_other_total 5\n",
        ] {
            assert!(text.contains(part), "{part:?} not in\n{text}");
        }
        assert!(text.ends_with("kv_xdp_other_total 5\n"));
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let m = Metric {
            name: "kv_x".into(),
            kind: Kind::Gauge,
            help: "a \\ b\nc \"q\"".into(),
            labels: vec![("a", "back\\slash \"quoted\"\nnext".into()), ("b", "plain".into())],
            value: 9,
        };
        assert_eq!(
            render(&[m]),
            "# HELP kv_x a \\\\ b\\nc \"q\"\n# TYPE kv_x gauge\n\
             kv_x{a=\"back\\\\slash \\\"quoted\\\"\\nnext\",b=\"plain\"} 9\n"
        );
    }

    #[test]
    fn head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\r\nbody"), Some(22));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r"), None);
        assert_eq!(head_end(b""), None);
        let lf_only = b"GET /metrics HTTP/1.1\nHost: x\n\n";
        assert_eq!(route(head_end(lf_only).map(|i| &lf_only[..i])), Route::Metrics { head_only: false });
    }

    #[test]
    fn routes() {
        let r = |h: &str| route(Some(h.as_bytes()));
        assert_eq!(r("GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics { head_only: false });
        assert_eq!(r("GET /metrics?x=1 HTTP/1.0"), Route::Metrics { head_only: false });
        assert_eq!(r("HEAD /metrics HTTP/1.1"), Route::Metrics { head_only: true });
        assert_eq!(r("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(r("GET /metrics"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(r("GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(r("GET  /metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(Some(b"GET /\xff HTTP/1.1")), Route::BadRequest);
        assert_eq!(route(None), Route::BadRequest);
    }
}
