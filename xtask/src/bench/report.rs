//! The benchmark's outputs: a table on the terminal (also saved as Markdown), results.json, and a PNG
//! chart (throughput and p99 per server and workload).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde_json::{json, Value};

use super::{memory, Row, Server};

const SERVERS: [Server; 8] = [
    Server::Memcached,
    Server::KvNoBpf,
    Server::KvXdp,
    Server::KvXdpBaseline,
    Server::KvNoBpfFsync,
    Server::KvFsync,
    Server::Reflector,
    Server::TcpCeiling,
];

fn ratio(rows: &[Row], r: &Row) -> Option<f64> {
    let mc = rows.iter().find(|m| m.server == Server::Memcached && m.workload == r.workload && m.load.is_some())?;
    (r.load.is_some() && mc.rps > 0.0).then(|| r.rps / mc.rps)
}

fn f(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "-".into(),
    }
}

/// The table as Markdown (printed as is: it reads fine on a terminal too).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str("| server | workload | req/s | x memcached | p50 us | p99 us | p99.9 us | server CPU us/req | all-CPU us/req | RSS MB | notes |\n");
    s.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        if r.load.is_none() {
            let _ = writeln!(
                s,
                "| {} | {} | - | - | - | - | - | - | - | - | skipped: {} |",
                r.server.label(),
                r.workload,
                r.note
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.server.label(),
            r.workload,
            r.rps,
            f(ratio(rows, r), 2),
            f(r.get("p50_us"), 0),
            f(r.get("p99_us"), 0),
            f(r.get("p999_us"), 0),
            f(r.server_cpu_us, 2),
            f(r.all_cpu_us, 2),
            f(r.rss_mb, 1),
            r.note
        );
    }
    s
}

/// RSS per idle connection for the C10K rows: (peak RSS − peak RSS of tcp-conns-50) / idle connections.
fn rss_per_conn(rows: &[Row], r: &Row) -> Option<f64> {
    let idle = r.load.as_ref()?.get("idle_conns_opened")?.as_f64()?;
    let base = rows.iter().find(|b| b.server == r.server && b.workload == "tcp-conns-50")?;
    let (peak, base) = (r.rss_peak_mb?, base.rss_peak_mb?);
    (idle > 0.0).then(|| (peak - base) * 1024.0 * 1024.0 / idle)
}

pub fn write(
    out: &Path,
    rows: &[Row],
    mem: &memory::Results,
    skips: &[(String, String)],
    machine: &Value,
    quick: bool,
    font: &str,
) -> Result<()> {
    let mem_md = memory::report::markdown(mem);
    if rows.is_empty() && mem_md.is_empty() {
        return Ok(());
    }
    let mut t = if rows.is_empty() { String::new() } else { table(rows) };
    let c10k: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            Some(format!(
                "- {} {}: {:.0} bytes of RSS per idle connection",
                r.server.label(),
                r.workload,
                rss_per_conn(rows, r)?
            ))
        })
        .collect();
    if !c10k.is_empty() {
        t.push('\n');
        t.push_str(&c10k.join("\n"));
        t.push('\n');
    }
    if !skips.is_empty() {
        t.push_str("\nNot run:\n");
        for (w, why) in skips {
            let _ = writeln!(t, "- {w}: {why}");
        }
    }
    t.push_str(&mem_md);
    println!("\n{t}");
    if !rows.is_empty() {
        println!(
            "server CPU: utime+stime of the server process over the measured window / requests. On veth, XDP runs in"
        );
        println!("softirq on the sending CPU and is charged to the client: see all-CPU (whole machine, client included) and BPF ns/pkt.");
    }
    std::fs::write(out.join("results.md"), &t)?;
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "server": r.server.label(),
                "workload": r.workload,
                "skipped": r.load.is_none(),
                "rps": r.rps,
                "ratio_memcached": ratio(rows, r),
                "p50_us": r.get("p50_us"),
                "p99_us": r.get("p99_us"),
                "p999_us": r.get("p999_us"),
                "server_cpu_us_per_req": r.server_cpu_us,
                "all_cpu_us_per_req": r.all_cpu_us,
                "rss_mb": r.rss_mb,
                "rss_peak_mb": r.rss_peak_mb,
                "rss_bytes_per_idle_conn": rss_per_conn(rows, r),
                "extra": r.extra,
                "note": r.note,
                "kv_load": r.load,
            })
        })
        .collect();
    let skipped: Vec<Value> = skips.iter().map(|(w, why)| json!({ "workload": w, "why": why })).collect();
    let doc = json!({
        "quick": quick, "machine": machine, "results": results, "not_run": skipped, "memory": memory::report::json(mem),
    });
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("bench: wrote {} and results.md", path.display());
    // A missing font or the like must not fail a benchmark that ran.
    if let Err(e) = register_font(font) {
        eprintln!("bench: warning: no charts: {e:#}");
        return Ok(());
    }
    let png = out.join("bench.png");
    match chart(rows, &png) {
        Ok(()) if !rows.is_empty() => eprintln!("bench: wrote {}", png.display()),
        Ok(()) => {}
        Err(e) => eprintln!("bench: warning: no chart: {e:#}"),
    }
    let png = out.join("memory.png");
    match memory::report::chart(mem, &png) {
        Ok(()) if !mem_md.is_empty() => eprintln!("bench: wrote {}", png.display()),
        Ok(()) => {}
        Err(e) => eprintln!("bench: warning: no memory chart: {e:#}"),
    }
    Ok(())
}

fn color(s: Server) -> RGBColor {
    match s {
        Server::Memcached => RGBColor(120, 120, 120),
        Server::KvNoBpf => RGBColor(31, 119, 180),
        Server::KvXdp => RGBColor(255, 127, 14),
        Server::KvXdpBaseline => RGBColor(140, 86, 75),
        Server::KvFsync => RGBColor(148, 103, 189),
        Server::KvNoBpfFsync => RGBColor(23, 190, 207),
        Server::Reflector => RGBColor(44, 160, 44),
        Server::TcpCeiling => RGBColor(214, 39, 40),
    }
}

/// Makes `font` plotters' "sans-serif" for the charts.
fn register_font(font: &str) -> Result<()> {
    let bytes = std::fs::read(font).with_context(|| format!("reading font {font}"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("bad font {font}"))
}

/// Grouped bars: req/s (top) and p99 (bottom, log scale) per workload, one bar per server.
pub fn chart(rows: &[Row], png: &Path) -> Result<()> {
    let measured: Vec<&Row> = rows.iter().filter(|r| r.load.is_some()).collect();
    let mut workloads: Vec<&str> = Vec::new();
    for r in &measured {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
    }
    let servers: Vec<Server> = SERVERS.into_iter().filter(|s| measured.iter().any(|r| r.server == *s)).collect();
    if workloads.is_empty() {
        return Ok(());
    }
    let n = workloads.len();
    let width = (220 * n as u32).max(900);
    let root = BitMapBackend::new(png, (width, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(500);
    let slot = 0.8 / servers.len() as f64;
    let value = |r: &Row, which: &str| -> Option<f64> {
        if which == "rps" {
            Some(r.rps / 1000.0)
        } else {
            r.get("p99_us")
        }
    };
    for (area, which, title) in
        [(&top, "rps", "throughput (thousand requests/s)"), (&bottom, "p99", "p99 latency (us, log scale)")]
    {
        let vals: Vec<f64> = measured.iter().filter_map(|r| value(r, which)).filter(|v| v.is_finite()).collect();
        // Headroom above the bars for the legend.
        let max = vals.iter().cloned().fold(1.0, f64::max);
        let max = if which == "rps" { max * 1.45 } else { max * 20.0 };
        let x = -0.5f64..n as f64 - 0.5;
        macro_rules! draw {
            ($chart:expr, $lo:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .disable_x_mesh()
                    .x_labels(0)
                    .y_desc(title)
                    .y_label_formatter(&|v| format!("{v:.0}"))
                    .y_label_style(("sans-serif", 13))
                    .draw()?;
                for (si, s) in servers.iter().enumerate() {
                    let c = color(*s);
                    let bars: Vec<_> = workloads
                        .iter()
                        .enumerate()
                        .filter_map(|(wi, w)| {
                            let r = measured.iter().find(|r| r.server == *s && r.workload == *w)?;
                            let v = value(r, which)?;
                            let x0 = wi as f64 - 0.4 + slot * si as f64;
                            Some(Rectangle::new([(x0, $lo), (x0 + slot * 0.9, v.max($lo))], c.filled()))
                        })
                        .collect();
                    chart
                        .draw_series(bars)?
                        .label(s.label())
                        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
                }
                // Workload names under their groups (the mesh's own labels fall between groups).
                let style = TextStyle::from(("sans-serif", 13).into_font()).color(&BLACK);
                for (wi, w) in workloads.iter().enumerate() {
                    let (px, py) = chart.backend_coord(&(wi as f64, $lo));
                    let (tw, _) = root.estimate_text_size(w, &style)?;
                    root.draw(&Text::new(w.to_string(), (px - tw as i32 / 2, py + 8), style.clone()))?;
                }
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()?;
            }};
        }
        let mut b = ChartBuilder::on(area);
        b.margin(12).x_label_area_size(30).y_label_area_size(70).caption(title, ("sans-serif", 20));
        if which == "rps" {
            draw!(b.build_cartesian_2d(x, 0f64..max)?, 0.0);
        } else {
            draw!(b.build_cartesian_2d(x, (1f64..max).log_scale())?, 1.0);
        }
    }
    root.present().context("writing the PNG")?;
    Ok(())
}
