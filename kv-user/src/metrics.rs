//! `--metrics-addr`: `GET /metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! The values come from [`crate::stats::general_numbers`], the same function the `stats` command prints,
//! so a scrape and `stats` can never disagree. Naming: `kv_` + the memcached stat name, `_total` on
//! counters; the kernel path's `xdp_pass_<reason>` lines become one family, `kv_xdp_passes_total{reason}`.
//!
//! The HTTP side is a hand-written HTTP/1.1 responder: one request per connection, then close. A scrape
//! endpoint needs nothing more, and it keeps an HTTP stack out of the server's dependencies.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::exec::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
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

/// General stats that go up and down; every other number there only grows (until `stats reset`).
const GAUGES: &[&str] = &[
    "max_connections",
    "curr_connections",
    "connection_structures",
    "limit_maxbytes",
    "accepting_conns",
    "threads",
    "bytes",
    "curr_items",
];

fn help(stat: &str) -> String {
    let h = match stat {
        "curr_connections" => "Open client connections.",
        "total_connections" => "Connections accepted since start.",
        "rejected_connections" => "Connections refused over the connection limit.",
        "cmd_get" => "Keys requested by get commands.",
        "cmd_set" => "Storage commands.",
        "get_hits" => "Keys requested and found.",
        "get_misses" => "Keys requested and not found.",
        "evictions" => "Live items evicted to free memory.",
        "curr_items" => "Items stored.",
        "bytes" => "Bytes charged against the memory limit by the stored items.",
        "limit_maxbytes" => "Memory limit for items, in bytes.",
        "xdp_packets" => "Packets the XDP program looked at.",
        "xdp_hits" => "Requests answered from the kernel cache.",
        "xdp_hit_keys" => "Keys answered from the kernel cache.",
        "kcache_admissions" => "Items added to the kernel cache.",
        "kcache_updates" => "Kernel cache entries rewritten by a write.",
        "kcache_invalidations" => "Kernel cache entries removed by a write, eviction or expiry.",
        "kcache_flushes" => "Whole kernel cache flushes.",
        "kcache_errors" => "Failed kernel cache updates.",
        _ => return format!("memcached `stats` field {stat}."),
    };
    h.to_string()
}

/// The metric for one general `stats` line.
pub fn metric_for(stat: &str, value: u64) -> Metric {
    if let Some(reason) = stat.strip_prefix("xdp_pass_") {
        return Metric {
            name: format!("{PREFIX}xdp_passes_total"),
            kind: Kind::Counter,
            help: "Packets the XDP program left to user space, by reason.".into(),
            labels: vec![("reason", reason.to_string())],
            value,
        };
    }
    let kind = if GAUGES.contains(&stat) { Kind::Gauge } else { Kind::Counter };
    let name = match kind {
        Kind::Counter => format!("{PREFIX}{stat}_total"),
        Kind::Gauge => format!("{PREFIX}{stat}"),
    };
    Metric { name, kind, help: help(stat), labels: Vec::new(), value }
}

/// Everything `/metrics` reports, read from the sources `stats` prints.
pub fn gather(ctx: &Ctx) -> Vec<Metric> {
    let mut out = vec![Metric {
        name: format!("{PREFIX}uptime_seconds"),
        kind: Kind::Gauge,
        help: "Seconds since the server started.".into(),
        labels: Vec::new(),
        value: ctx.stats.uptime(),
    }];
    crate::stats::general_numbers(ctx, &mut |stat, v| out.push(metric_for(stat, v)));
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
        let _ = write!(out, "\n# TYPE {} {}\n", m.name, m.kind.as_str());
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
/// Scrapes served at once; more connections are closed unanswered (a scraper retries).
const MAX_ACTIVE: usize = 16;
/// A whole exchange must finish within this, so a stalled client cannot hold a slot.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `stop` changes; runs on the acceptor's runtime (the workers never see scrapes).
pub async fn serve(listener: TcpListener, ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let active = Arc::new(AtomicUsize::new(0));
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
        if active.load(Relaxed) >= MAX_ACTIVE {
            continue;
        }
        active.fetch_add(1, Relaxed);
        let (ctx, active) = (ctx.clone(), active.clone());
        tokio::spawn(async move {
            if let Ok(Err(e)) = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &ctx)).await {
                log::debug!("metrics request: {e}");
            }
            active.fetch_sub(1, Relaxed);
        });
    }
}

async fn exchange(mut s: TcpStream, ctx: &Ctx) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if buf.len() > MAX_HEAD {
            break None;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(());
            }
            break None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (status, body, head_only) = match route(head_len.map(|i| &buf[..i])) {
        Route::Metrics { head_only } => ("200 OK", render(&gather(ctx)), head_only),
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
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
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
