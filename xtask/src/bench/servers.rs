//! The servers under test: starting one in the server namespace (and waiting until it answers), and
//! asking it over TCP from the client namespace (`version`, `stats`).

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::bed::{SERVER_IF, SERVER_IP, SUBNET};
use super::cpus::pin_command;
use super::procs::{check_interrupted, ns_command, tail, which, Proc};
use kv_bench::keys::KeySpace;
use kv_bench::zipf::Zipf;

use super::workloads::{args, Server, ZIPF};
use super::{Ctx, PORT};

impl Ctx {
    pub(super) fn start_server(&self, server: Server, tag: &str, data_dir: Option<&Path>) -> Result<Proc> {
        let (port, threads, conns) = (PORT.to_string(), self.server_threads().to_string(), self.conn_limit.to_string());
        let ip = SERVER_IP.to_string();
        let (bin, a): (PathBuf, Vec<String>) = match server {
            Server::Memcached => (
                PathBuf::from("memcached"),
                args(&["-u", "root", "-l", &ip, "-p", &port, "-U", &port, "-t", &threads, "-m", "1024", "-c", &conns]),
            ),
            Server::TcpCeiling => {
                // Its one reply is as long as a real hit's: the value size, and the key length the requests
                // carry on average (each key weighted by its popularity).
                let value_size = self.opts.value_size;
                let keys = self.opts.keys as u64;
                let sizes = KeySpace::fixed(keys, value_size).sizes(&Zipf::new(keys, ZIPF));
                let key_len = (sizes.req_key_mean.round() as usize).to_string();
                let listen = format!("{ip}:{port}");
                let a = ["--listen", &listen, "--threads", &threads, "--key-len", &key_len];
                (self.release.join("tcp-ceiling"), args(&[&a[..], &["--value-size", &value_size.to_string()]].concat()))
            }
            _ => {
                let mut a = args(&["-l", &ip, "-p", &port, "-U", &port, "-t", &threads, "-m", "1024", "-c", &conns]);
                a.extend(args(&["--udp-allow", SUBNET]));
                match server {
                    Server::KvNoBpf => a.extend(args(&["--no-bpf", "--no-persist"])),
                    Server::KvXdp | Server::KvXdpBaseline => {
                        a.extend(args(&["--iface", SERVER_IF, "--xdp-mode", "native", "--no-persist"]))
                    }
                    _ => {
                        let dir = data_dir.context("data dir")?.to_string_lossy().into_owned();
                        if server == Server::KvNoBpfFsync {
                            a.push("--no-bpf".into());
                        } else {
                            a.extend(args(&["--iface", SERVER_IF, "--xdp-mode", "native"]));
                        }
                        a.extend(args(&["--fsync", "everysec", "--data-dir", &dir]));
                    }
                }
                let dir = match (server, &self.opts.baseline) {
                    (Server::KvXdpBaseline, Some(dir)) => dir,
                    _ => &self.release,
                };
                (dir.join("kv-server"), a)
            }
        };
        let p = self.spawn_server(server, &bin, &a, tag, || self.version_ok())?;
        if (server.is_kv_xdp() || server == Server::KvFsync) && self.bed.server_xdp_prog_id()?.is_none() {
            bail!(
                "{} runs but has no XDP program on {SERVER_IF}; its output:\n{}",
                server.label(),
                tail(&self.logs.join(format!("{tag}.server.log")))
            );
        }
        Ok(p)
    }

    /// Starts `bin` (on PATH if relative) with `a` in the server namespace, logging to `<tag>.server.log`,
    /// and waits until `ready` says it answers.
    pub(super) fn spawn_server(
        &self,
        server: Server,
        bin: &Path,
        a: &[String],
        tag: &str,
        ready: impl Fn() -> bool,
    ) -> Result<Proc> {
        let bin = if bin.is_absolute() { bin.to_path_buf() } else { which(bin)? };
        let log = self.logs.join(format!("{tag}.server.log"));
        std::fs::write(self.logs.join(format!("{tag}.server.args")), a.join(" "))?;
        let mut cmd = ns_command(&self.bed.server_ns, &bin, a, &log)?;
        if let Some(p) = &self.pin {
            pin_command(&mut cmd, &p.server);
        }
        let child = cmd.spawn().context("starting the server")?;
        let mut p = Proc { child, name: server.label().to_string() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupted()?;
            if !p.alive() {
                bail!("{} exited at start; its output: {}\n{}", server.label(), log.display(), tail(&log));
            }
            if ready() {
                self.pin_network();
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("{} did not answer within 20 s; its output: {}\n{}", server.label(), log.display(), tail(&log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `version` over TCP from the client namespace.
    fn version_ok(&self) -> bool {
        self.tcp_request(b"version\r\n", b"\r\n").is_some_and(|r| r.starts_with("VERSION"))
    }

    fn tcp_request(&self, req: &[u8], end: &[u8]) -> Option<String> {
        let addr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT));
        self.bed
            .client_ns
            .try_run(|| {
                let mut c = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.write_all(req)?;
                super::memory::client::reply_until(&mut c, end)
            })
            .ok()
    }

    /// The server's numeric `stats`.
    pub(super) fn server_stats(&self) -> Option<std::collections::HashMap<String, u64>> {
        let text = self.tcp_request(b"stats\r\n", b"END\r\n")?;
        Some(
            text.lines()
                .filter_map(|l| l.strip_prefix("STAT "))
                .filter_map(|l| l.split_once(' '))
                .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
                .collect(),
        )
    }
}
