//! The memory rows as Markdown tables (printed and saved with the throughput table), as JSON for
//! results.json, and as a chart (memory.png: items per RSS megabyte and hit ratio). Pass/fail columns
//! compare each measurement with issue 11's goal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde_json::{json, Value};

use super::{bound_mb, Hit, Idle, Items, Results, Server, Stall, STALL};

/// Issue 11's goals: kv-server's items per RSS MB over memcached's, by value size.
fn items_goal(value_size: usize) -> Option<f64> {
    match value_size {
        32 => Some(1.3),
        512 => Some(1.0),
        _ => None,
    }
}
/// RSS per idle connection, bytes: 0.6 KB (memcached's figure when the goal was set).
const IDLE_GOAL: f64 = 0.6 * 1024.0;

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub fn bytes_per_item(r: &Items) -> f64 {
    r.rss_after_kb.saturating_sub(r.rss_before_kb) as f64 * 1024.0 / r.items.max(1) as f64
}

/// Items per megabyte (MiB) of RSS at `bytes` per item.
pub fn per_mb(bytes: f64) -> f64 {
    1_048_576.0 / bytes
}

/// RSS per connection once idle for `IDLE_FOR` (what the goal is about).
pub fn bytes_per_conn(r: &Idle) -> f64 {
    r.rss_after_kb.saturating_sub(r.rss_before_kb) as f64 * 1024.0 / r.conns.max(1) as f64
}

/// RSS per connection right after opening.
fn bytes_per_open_conn(r: &Idle) -> f64 {
    r.rss_open_kb.saturating_sub(r.rss_before_kb) as f64 * 1024.0 / r.conns.max(1) as f64
}

fn hit_ratio(r: &Hit) -> f64 {
    r.count.hits as f64 / r.count.gets.max(1) as f64
}

fn yes(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

/// kv-server's items per MB over memcached's at the same value size.
fn items_ratio(all: &[Items], r: &Items) -> Option<f64> {
    let mc = all.iter().find(|m| m.server == Server::Memcached && m.value_size == r.value_size)?;
    Some(bytes_per_item(mc) / bytes_per_item(r))
}

fn hit_vs_memcached(all: &[Hit], r: &Hit) -> Option<f64> {
    let mc = all.iter().find(|m| m.server == Server::Memcached)?;
    Some(hit_ratio(r) / hit_ratio(mc))
}

/// `(ratio, goal met)` cells for a kv-server row; memcached's row is the reference.
fn vs_cells(server: Server, ratio: Option<f64>, goal: Option<f64>) -> (String, String) {
    match (server, ratio) {
        (Server::Memcached, _) | (_, None) => ("1.00".into(), "-".into()),
        (_, Some(x)) => (format!("{x:.2}"), goal.map_or("-".into(), |g| format!("{} (≥ {g:.1}x)", yes(x >= g)))),
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    if r.items.is_empty() && r.overfill.is_empty() && r.hit.is_empty() && r.idle.is_empty() && r.stall.is_empty() {
        return s;
    }
    s.push_str("\n### Memory\n");
    items_table(&mut s, &r.items);
    overfill_table(&mut s, r);
    hit_table(&mut s, &r.hit);
    idle_table(&mut s, &r.idle);
    stall_table(&mut s, &r.stall);
    s
}

fn items_table(s: &mut String, rows: &[Items]) {
    let Some(first) = rows.first() else { return };
    let _ = writeln!(
        s,
        "\nRSS per item: {} items `key:N` set with `noreply` into `-m 4096`, RSS growth / items\n",
        first.items
    );
    s.push_str("| value | server | items held | RSS before MB | RSS after MB | bytes/item | items/MB | x memcached | goal met |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let b = bytes_per_item(r);
        let (x, met) = vs_cells(r.server, items_ratio(rows, r), items_goal(r.value_size));
        let _ = writeln!(
            s,
            "| {} B | {} | {} | {:.1} | {:.1} | {b:.0} | {:.0} | {x} | {met} |",
            r.value_size,
            r.server.label(),
            r.curr_items,
            mb(r.rss_before_kb),
            mb(r.rss_after_kb),
            per_mb(b)
        );
    }
}

fn overfill_table(s: &mut String, r: &Results) {
    if r.overfill.is_empty() {
        return;
    }
    s.push_str(
        "\nOverfill: distinct 32-byte sets with `noreply` into `-m`; RSS at the end against 1.1 × m + 16 MB\n\n",
    );
    s.push_str("| -m | sets | server | RSS MB | peak MB | bound MB | within | items held | evictions |\n");
    s.push_str("|---:|---:|---|---:|---:|---:|---|---:|---:|\n");
    for o in &r.overfill {
        let bound = bound_mb(o.m);
        let err = if o.errors > 0 { format!(" ({} error replies)", o.errors) } else { String::new() };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {:.1} | {bound:.1} | {} | {}{err} | {} |",
            o.m,
            o.sets,
            o.server.label(),
            mb(o.rss_kb),
            mb(o.peak_kb),
            yes(mb(o.rss_kb) <= bound),
            o.curr_items,
            o.evictions
        );
    }
}

fn hit_table(s: &mut String, rows: &[Hit]) {
    let Some(h) = rows.first() else { return };
    let _ = writeln!(
        s,
        "\nHit ratio at equal memory: `-m {}`, {} keys with Zipf 0.99 popularity, cache-aside (get; set on a miss), \
         {} connections with the same seeded sequences for both servers; of {} gets, the last {} counted\n",
        h.m,
        h.keys,
        super::CONNS,
        h.gets,
        h.count.gets
    );
    s.push_str("| server | hit ratio | x memcached | goal met | items held | keys / items held | evictions |\n");
    s.push_str("|---|---:|---:|---|---:|---:|---:|\n");
    for r in rows {
        let (x, met) = vs_cells(r.server, hit_vs_memcached(rows, r), Some(1.0));
        let _ = writeln!(
            s,
            "| {} | {:.2}% | {x} | {met} | {} | {:.1} | {} |",
            r.server.label(),
            100.0 * hit_ratio(r),
            r.curr_items,
            r.keys as f64 / r.curr_items.max(1) as f64,
            r.evictions
        );
    }
}

fn idle_table(s: &mut String, rows: &[Idle]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "\nIdle connections: RSS growth / connections opened (nothing sent on them), once all are open and \
         after {} s of silence\n",
        super::IDLE_FOR.as_secs()
    );
    s.push_str(
        "| server | connections | RSS before MB | RSS idle MB | bytes/conn open | bytes/conn idle | goal met |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let b = bytes_per_conn(r);
        let met = if r.server == Server::Memcached {
            "-".into()
        } else {
            format!("{} (≤ {IDLE_GOAL:.0})", yes(b <= IDLE_GOAL))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.0} | {b:.0} | {met} |",
            r.server.label(),
            r.conns,
            mb(r.rss_before_kb),
            mb(r.rss_after_kb),
            bytes_per_open_conn(r)
        );
    }
}

fn stall_table(s: &mut String, rows: &[Stall]) {
    if rows.is_empty() {
        return;
    }
    let (n, announce, send, m) = STALL;
    let _ = writeln!(
        s,
        "\nStalled uploads: {n} connections each send `set sI 0 0 {announce}` and {send} bytes of the value, then \
         stall; `-m {m}`, bound {:.1} MB\n",
        bound_mb(m)
    );
    s.push_str("| server | value MB taken in | closed by server | RSS before MB | RSS hanging MB | peak MB | within | RSS after close MB | within |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---|---:|---|\n");
    for r in rows {
        let bound = bound_mb(r.m);
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |",
            r.server.label(),
            r.sent as f64 / 1_048_576.0,
            r.closed,
            mb(r.rss_before_kb),
            mb(r.rss_hang_kb),
            mb(r.peak_kb),
            yes(mb(r.peak_kb) <= bound),
            mb(r.rss_closed_kb),
            yes(mb(r.rss_closed_kb) <= bound)
        );
    }
}

pub fn json(r: &Results) -> Value {
    let items: Vec<Value> = r
        .items
        .iter()
        .map(|i| {
            json!({
                "server": i.server.label(), "value_size": i.value_size, "items": i.items, "curr_items": i.curr_items,
                "rss_before_kb": i.rss_before_kb, "rss_after_kb": i.rss_after_kb,
                "bytes_per_item": bytes_per_item(i), "items_per_mb": per_mb(bytes_per_item(i)),
                "items_per_mb_x_memcached": items_ratio(&r.items, i), "goal_x_memcached": items_goal(i.value_size),
            })
        })
        .collect();
    let overfill: Vec<Value> = r
        .overfill
        .iter()
        .map(|o| {
            json!({
                "server": o.server.label(), "m": o.m, "sets": o.sets, "rss_kb": o.rss_kb, "peak_kb": o.peak_kb,
                "bound_mb": bound_mb(o.m), "within": mb(o.rss_kb) <= bound_mb(o.m),
                "curr_items": o.curr_items, "evictions": o.evictions, "error_replies": o.errors,
            })
        })
        .collect();
    let hit: Vec<Value> = r
        .hit
        .iter()
        .map(|h| {
            json!({
                "server": h.server.label(), "m": h.m, "keys": h.keys, "gets": h.gets, "gets_counted": h.count.gets,
                "hits": h.count.hits, "errors": h.count.errors, "hit_ratio": hit_ratio(h),
                "x_memcached": hit_vs_memcached(&r.hit, h), "curr_items": h.curr_items, "evictions": h.evictions,
            })
        })
        .collect();
    let idle: Vec<Value> = r
        .idle
        .iter()
        .map(|i| {
            json!({
                "server": i.server.label(), "conns": i.conns, "rss_before_kb": i.rss_before_kb,
                "rss_open_kb": i.rss_open_kb, "rss_after_kb": i.rss_after_kb, "idle_secs": super::IDLE_FOR.as_secs(),
                "bytes_per_conn_open": bytes_per_open_conn(i), "bytes_per_conn": bytes_per_conn(i), "goal_bytes": IDLE_GOAL,
            })
        })
        .collect();
    let stall: Vec<Value> = r
        .stall
        .iter()
        .map(|t| {
            json!({
                "server": t.server.label(), "conns": t.conns, "m": t.m, "value_bytes_sent": t.sent,
                "conns_complete": t.complete, "conns_closed_by_server": t.closed, "rss_before_kb": t.rss_before_kb, "rss_hang_kb": t.rss_hang_kb,
                "peak_kb": t.peak_kb, "rss_closed_kb": t.rss_closed_kb, "bound_mb": bound_mb(t.m),
            })
        })
        .collect();
    json!({ "items": items, "overfill": overfill, "hit_ratio": hit, "idle_conns": idle, "stalled_uploads": stall })
}

/// Two panels of bars, memcached and kv-server side by side: items per RSS MB by value size, and hit
/// ratio at equal memory. The font is registered by the throughput chart.
pub fn chart(r: &Results, png: &Path) -> Result<()> {
    let servers = [Server::Memcached, Server::KvNoBpf];
    let mut sizes: Vec<usize> = r.items.iter().map(|i| i.value_size).collect();
    sizes.dedup();
    let items: Vec<(String, Vec<Option<f64>>)> = sizes
        .iter()
        .map(|&v| {
            let per =
                |s| r.items.iter().find(|i| i.server == s && i.value_size == v).map(|i| per_mb(bytes_per_item(i)));
            (format!("{v} B values"), servers.iter().map(|&s| per(s)).collect())
        })
        .collect();
    if items.is_empty() && r.hit.is_empty() {
        return Ok(());
    }
    let hit = servers.iter().map(|&s| r.hit.iter().find(|h| h.server == s).map(|h| 100.0 * hit_ratio(h))).collect();
    let hit = [("Zipf 0.99, 10x the keys that fit".to_string(), hit)];
    let root = BitMapBackend::new(png, (1000, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(600);
    bars(&left, "items per RSS megabyte", &items, &servers)?;
    bars(&right, "hit ratio at equal -m (%)", &hit, &servers)?;
    root.present().context("writing the PNG")?;
    Ok(())
}

fn color(s: Server) -> RGBColor {
    if s == Server::Memcached {
        RGBColor(120, 120, 120)
    } else {
        RGBColor(31, 119, 180)
    }
}

/// Grouped bars: one group per (name, value per server).
fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    groups: &[(String, Vec<Option<f64>>)],
    servers: &[Server],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let max = groups.iter().flat_map(|g| g.1.iter().flatten()).cloned().fold(1.0, f64::max) * 1.3;
    let n = groups.len().max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .caption(title, ("sans-serif", 18))
        .build_cartesian_2d(-0.5f64..n - 0.5, 0f64..max)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len())
        .x_label_formatter(&|x| {
            let i = x.round();
            groups.get(i as usize).filter(|_| (x - i).abs() < 0.01).map_or(String::new(), |g| g.0.clone())
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let slot = 0.8 / servers.len() as f64;
    for (si, &s) in servers.iter().enumerate() {
        let c = color(s);
        let rects = groups.iter().enumerate().filter_map(|(gi, g)| {
            let v = g.1.get(si).copied().flatten()?;
            let x0 = gi as f64 - 0.4 + slot * si as f64;
            Some(Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, v)], c.filled()))
        });
        chart
            .draw_series(rects)?
            .label(s.label())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).border_style(BLACK).draw()?;
    Ok(())
}
