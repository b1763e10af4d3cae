//! Configuration: command-line flags (names follow memcached's where memcached has one), optionally on
//! top of a TOML file (`--config`) whose keys are the long flag names. Precedence: built-in defaults <
//! config file < command-line flags; a list given on the command line (`--udp-allow`) replaces the
//! file's list rather than extending it.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory as _, Parser, ValueEnum};

pub use crate::cidr::{parse_cidr, udp_allowed, Cidr};
pub use crate::persist::FsyncPolicy;

/// `--fsync always|everysec|no`: when the append-only log is flushed to stable storage.
impl ValueEnum for FsyncPolicy {
    fn value_variants<'a>() -> &'a [Self] {
        &[FsyncPolicy::Always, FsyncPolicy::Everysec, FsyncPolicy::No]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            FsyncPolicy::Always => PossibleValue::new("always")
                .help("fsync before every reply to a write (group commit: concurrent writers share one fsync)"),
            FsyncPolicy::Everysec => PossibleValue::new("everysec").help("fsync in the background once a second"),
            FsyncPolicy::No => PossibleValue::new("no").help("Leave it to the OS"),
        })
    }
}

impl From<&Config> for crate::persist::LogOptions {
    fn from(c: &Config) -> Self {
        crate::persist::LogOptions { dir: c.data_dir.clone(), fsync: c.fsync }
    }
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-25T10:00:00Z  INFO kv_server: message key=value`
    Text,
    /// One JSON object per line: timestamp, level, target, message and fields.
    Json,
}

pub use crate::kernel::XdpMode;

/// `--xdp-mode native|generic`: the kernel path's own type, parsed here so it needs no CLI code.
impl ValueEnum for XdpMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[XdpMode::Native, XdpMode::Generic]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }))
    }
}

/// memcached-compatible key-value cache with an in-kernel (XDP) GET path.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "kv-server", version, about, after_help = crate::persist::tools::SERVER_HELP)]
pub struct Config {
    /// Read settings from this TOML file first (keys = the long flag names; flags given here win).
    #[arg(long = "config", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit (with no other flags: the built-in defaults).
    #[arg(long = "print-config")]
    pub print_config: bool,
    /// TCP port to listen on (0 = off).
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    pub port: u16,
    /// UDP port to listen on (0 = off).
    #[arg(short = 'U', long = "udp-port", default_value_t = 11211)]
    pub udp_port: u16,
    /// Interface address to listen on.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Item memory in megabytes (at least 1).
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    pub memory_limit_mb: u64,
    /// Max simultaneous connections (at least 1).
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    pub max_connections: usize,
    /// Number of worker threads (1 to 256).
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    pub threads: usize,
    /// Max item size (e.g. 1m, 512k, 2097152). Minimum 1k, maximum 1g.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = parse_size)]
    pub item_size_max: usize,
    /// Verbosity (-v, -vv).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log lines as human-readable text, or as one JSON object per line (for log shippers).
    #[arg(long = "log-format", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Directory for the append-only log.
    #[arg(long = "data-dir", default_value = "kv-data")]
    pub data_dir: PathBuf,
    /// When to fsync the log.
    #[arg(long = "fsync", value_enum, default_value_t = FsyncPolicy::Everysec)]
    pub fsync: FsyncPolicy,
    /// Keep the log's history this long (e.g. 1h, 30m, 2d, 90s; 0 = none) so that `--recover-to` can go back
    /// that far; it costs the disk of the writes made in that time plus one older log.
    #[arg(long = "history", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub history_secs: u64,
    /// Start with the state as of this moment (RFC 3339, or unix seconds): the records logged after it are set
    /// aside in the data directory. One-shot: not a config-file key; repeating it after it was applied is a
    /// plain start.
    #[arg(long = "recover-to", value_name = "TIME", value_parser = crate::persist::tools::parse_time)]
    pub recover_to: Option<u64>,
    /// Compact the log only once it is at least this big (and over twice the live data), e.g. 64m.
    #[arg(long = "compact-min-size", value_name = "BYTES", default_value = "64m", value_parser = parse_bytes)]
    pub compact_min_size: u64,
    /// Keep everything in memory only.
    #[arg(long = "no-persist")]
    pub no_persist: bool,
    /// Do not load the XDP program; serve everything from user space.
    #[arg(long = "no-bpf")]
    pub no_bpf: bool,
    /// Interface to attach the XDP program to.
    #[arg(long = "iface", default_value = "lo")]
    pub iface: String,
    /// XDP attach mode (lo only supports generic).
    #[arg(long = "xdp-mode", value_enum, default_value_t = XdpMode::Generic)]
    pub xdp_mode: XdpMode,
    /// Slots of the kernel cache (four candidate slots per key, rounded up to a power of two; about 1.7 KB each).
    #[arg(long = "kcache-entries", default_value_t = 16384)]
    pub kcache_entries: u32,
    /// Largest value the kernel answers for; larger ones are served by user space.
    /// The default keeps a 1-key reply within a 1500-byte MTU.
    #[arg(long = "kcache-value-max", default_value_t = 1024)]
    pub kcache_value_max: usize,
    /// User-space GET hits on an item before it is admitted to the kernel cache.
    #[arg(long = "kcache-admit-hits", default_value_t = 2)]
    pub kcache_admit_hits: u32,
    /// Source prefixes (CIDR, IPv4 or IPv6) whose UDP requests are answered, by the kernel and by user
    /// space (amplification guard). Loopback (127.0.0.0/8, ::1) is always allowed. Repeatable.
    #[arg(long = "udp-allow", value_parser = parse_cidr)]
    pub udp_allow: Vec<Cidr>,
    /// Allow the `shutdown` command (memcached's -A): a client can then stop the server cleanly.
    #[arg(short = 'A', long = "enable-shutdown")]
    pub enable_shutdown: bool,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9150). Off by default.
    #[arg(long = "metrics-addr", value_name = "IP:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// The UDP allowlist: loopback plus `--udp-allow`.
    pub fn udp_allowlist(&self) -> Vec<Cidr> {
        [Cidr::LOOPBACK, Cidr::LOOPBACK6].into_iter().chain(self.udp_allow.iter().copied()).collect()
    }
}

/// `-m`/`-I`/`-t`: shards = 4 × threads rounded up to a power of two, at least 64.
impl From<&Config> for crate::store::StoreOptions {
    fn from(c: &Config) -> Self {
        crate::store::StoreOptions {
            memory_limit: c.memory_limit_mb.saturating_mul(1 << 20),
            item_size_max: c.item_size_max,
            shards: c.threads.saturating_mul(4).clamp(64, 4096),
        }
    }
}

impl From<&Config> for crate::kernel::KernelOptions {
    fn from(c: &Config) -> Self {
        // Datagrams the server's socket would not receive are left to the stack.
        let listen = Some(c.listen);
        crate::kernel::KernelOptions {
            iface: c.iface.clone(),
            mode: c.xdp_mode,
            load: crate::kernel::KernelOpts {
                port: c.udp_port,
                cache_entries: c.kcache_entries,
                log: c.verbose >= 2,
                listen,
                ..Default::default()
            },
            allow: c.udp_allowlist().iter().map(|a| (a.addr, a.prefix)).collect(),
            value_max: c.kcache_value_max,
            admit_hits: c.kcache_admit_hits,
        }
    }
}

/// Flags about the configuration itself (or clap's own): not settings, so not config-file keys.
/// `recover-to` acts once: in a file, every restart would undo the writes made since.
const NOT_FILE_KEYS: &[&str] = &["config", "print-config", "help", "version", "recover-to"];

/// Why the configuration could not be loaded.
#[derive(Debug)]
pub enum ConfigError {
    /// The command line itself (also `--help` / `--version`): clap prints and exits.
    Cli(clap::Error),
    /// The config file: unreadable, not TOML, an unknown key, or a bad value.
    File(String),
    /// Settings the server refuses to start with (see [`Config::check`]).
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Cli(e) => write!(f, "{e}"),
            ConfigError::File(m) | ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

/// Most worker threads `-t` accepts. memcached warns above 64 but starts thousands; each worker here
/// costs a thread, a runtime and six descriptors, and past a few hundred they only contend.
pub const MAX_THREADS: usize = 256;
/// memcached's threshold for its "not recommended" warning.
const WARN_THREADS: usize = 64;

impl Config {
    /// Refuses what memcached refuses (`-m 0`, `-c 0`, `-t 0`, an item size limit over half the memory)
    /// and a `-t` over [`MAX_THREADS`]; the message names the flag.
    pub fn check(&self) -> Result<(), String> {
        if self.memory_limit_mb == 0 {
            return Err("-m 0: the memory limit must be at least 1 (megabyte)".into());
        }
        // memcached's rule and words.
        if self.item_size_max as u64 > self.memory_limit_mb.saturating_mul(1 << 20) / 2 {
            return Err(format!(
                "-I {} with -m {}: Cannot set item size limit higher than 1/2 of memory max.",
                self.item_size_max, self.memory_limit_mb
            ));
        }
        if self.no_persist && self.recover_to.is_some() {
            return Err("--recover-to with --no-persist: there is no log to recover from".into());
        }
        if self.max_connections == 0 {
            return Err("-c 0: Maximum connections must be greater than 0".into());
        }
        match self.threads {
            0 => Err("-t 0: Number of threads must be greater than 0".into()),
            n if n > MAX_THREADS => Err(format!(
                "-t {n}: at most {MAX_THREADS} worker threads (memcached warns above {WARN_THREADS}: set it to the \
                 number of cores in your machine or less)"
            )),
            _ => Ok(()),
        }
    }

    /// What to warn about at start: settings that are allowed but have no effect or are unwise. A
    /// setting another flag turns off is only mentioned when it differs from its default, so a full
    /// config file (every key) plus `--no-persist` or `--no-bpf` on the command line stays quiet.
    pub fn warnings(&self) -> Vec<String> {
        let d = Config::parse_from(["kv-server"]);
        let mut out = Vec::new();
        if self.threads > WARN_THREADS {
            out.push(format!(
                "-t {}: setting a high number of worker threads is not recommended; set it to the number of \
                 cores in your machine or less",
                self.threads
            ));
        }
        if self.no_persist && self.fsync != d.fsync {
            let name = self.fsync.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default();
            out.push(format!("--fsync {name} has no effect with --no-persist: nothing is written to disk"));
        }
        if self.no_bpf {
            let ignored = [
                ("--iface", self.iface != d.iface),
                ("--xdp-mode", self.xdp_mode != d.xdp_mode),
                ("--kcache-entries", self.kcache_entries != d.kcache_entries),
                ("--kcache-value-max", self.kcache_value_max != d.kcache_value_max),
                ("--kcache-admit-hits", self.kcache_admit_hits != d.kcache_admit_hits),
            ];
            for (flag, _) in ignored.iter().filter(|(_, set)| *set) {
                out.push(format!("{flag} has no effect with --no-bpf: no XDP program is loaded"));
            }
        }
        out
    }
}

impl Config {
    /// Parses `args` (argv, program name first) on top of the `--config` file, if one is given, and
    /// [`check`](Config::check)s the result.
    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let cli = Config::command().try_get_matches_from(&args).map_err(ConfigError::Cli)?;
        let Some(path) = cli.get_one::<PathBuf>("config") else {
            let cfg = Config::try_parse_from(&args).map_err(ConfigError::Cli)?;
            return cfg.check().map(|()| cfg).map_err(ConfigError::Invalid);
        };
        let err = |m: String| ConfigError::File(format!("config file {}: {m}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| err(e.to_string().trim_end().into()))?;
        let synthetic = file_args(&table, |id| cli.value_source(id) == Some(ValueSource::CommandLine)).map_err(err)?;
        // Check the file's arguments alone first, so a bad value is reported against the file.
        let prog = args.first().cloned().unwrap_or_else(|| "kv-server".into());
        let file_only = std::iter::once(prog.clone()).chain(synthetic.iter().map(Into::into));
        if let Err(e) = Config::command().try_get_matches_from(file_only) {
            let msg = e.render().to_string();
            let first = msg.lines().next().unwrap_or_default();
            return Err(err(first.trim_start_matches("error: ").to_string()));
        }
        // The file's settings go before the real arguments; keys the command line sets were left out.
        let all = std::iter::once(prog).chain(synthetic.into_iter().map(Into::into)).chain(args.into_iter().skip(1));
        let cfg = Config::try_parse_from(all).map_err(ConfigError::Cli)?;
        cfg.check().map(|()| cfg).map_err(ConfigError::Invalid)
    }

    /// The effective settings as a config file (every key; an unset optional one as a comment).
    pub fn to_toml(&self) -> String {
        use toml::Value;
        let s = |v: &str| Value::String(v.to_string()).to_string();
        let name = |p: Option<clap::builder::PossibleValue>| s(p.as_ref().map_or("", |p| p.get_name()));
        let allow: Vec<String> = self.udp_allow.iter().map(|c| s(&format!("{}/{}", c.addr, c.prefix))).collect();
        let mut lines: Vec<String> = Vec::new();
        let mut put = |k: &str, v: String| lines.push(format!("{k} = {v}"));
        put("port", self.port.to_string());
        put("udp-port", self.udp_port.to_string());
        put("listen", s(&self.listen.to_string()));
        put("memory-limit", self.memory_limit_mb.to_string());
        put("conn-limit", self.max_connections.to_string());
        put("threads", self.threads.to_string());
        put("max-item-size", self.item_size_max.to_string());
        put("verbose", self.verbose.to_string());
        put("log-format", name(self.log_format.to_possible_value()));
        put("data-dir", s(&self.data_dir.to_string_lossy()));
        put("fsync", name(self.fsync.to_possible_value()));
        put("history", s(&format!("{}s", self.history_secs)));
        put("compact-min-size", self.compact_min_size.to_string());
        put("no-persist", self.no_persist.to_string());
        put("no-bpf", self.no_bpf.to_string());
        put("iface", s(&self.iface));
        put("xdp-mode", name(self.xdp_mode.to_possible_value()));
        put("kcache-entries", self.kcache_entries.to_string());
        put("kcache-value-max", self.kcache_value_max.to_string());
        put("kcache-admit-hits", self.kcache_admit_hits.to_string());
        put("enable-shutdown", self.enable_shutdown.to_string());
        put("udp-allow", format!("[{}]", allow.join(", ")));
        match self.metrics_addr {
            Some(a) => put("metrics-addr", s(&a.to_string())),
            None => lines.push("# metrics-addr = \"127.0.0.1:9150\"  # unset: no metrics endpoint".into()),
        }
        lines.join("\n") + "\n"
    }
}

/// Turns config-file keys into `--key=value` arguments. Keys for which `on_cli(id)` holds are skipped:
/// the command line overrides them (for a list, replaces it).
fn file_args(table: &toml::Table, on_cli: impl Fn(&str) -> bool) -> Result<Vec<String>, String> {
    let cmd = Config::command();
    let mut out = Vec::new();
    for (key, value) in table {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_FILE_KEYS.contains(&key.as_str()))
            .ok_or_else(|| {
                format!("unknown key `{key}` (keys are the long flag names, see kv-server --print-config)")
            })?;
        if on_cli(arg.get_id().as_str()) {
            continue;
        }
        let scalar = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            other => Err(format!("key `{key}`: expected a string or an integer, got {}", other.type_str())),
        };
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => out.extend(b.then(|| format!("--{key}"))),
            (ArgAction::SetTrue, v) => {
                return Err(format!("key `{key}`: expected true or false, got {}", v.type_str()))
            }
            (ArgAction::Count, toml::Value::Integer(n @ 0..=255)) => {
                out.extend(std::iter::repeat_n(format!("--{key}"), *n as usize))
            }
            (ArgAction::Count, _) => return Err(format!("key `{key}`: expected an integer 0..=255")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for v in items {
                    out.push(format!("--{key}={}", scalar(v)?));
                }
            }
            (ArgAction::Append, v) => return Err(format!("key `{key}`: expected an array, got {}", v.type_str())),
            (_, v) => out.push(format!("--{key}={}", scalar(v)?)),
        }
    }
    Ok(out)
}

/// Parses a duration: plain seconds or with an s/m/h/d suffix (`0` = none). Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1u64),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b'h') => (&s[..s.len() - 1], 3600),
        Some(b'd') => (&s[..s.len() - 1], 86400),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 1h, 2d or 0"))?;
    n.checked_mul(mult).ok_or_else(|| format!("duration too long: {s}"))
}

/// Parses a byte count: plain bytes or with a k/m/g suffix, at least 1k.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().as_bytes().last() {
        Some(b'k' | b'K') => (&s.trim()[..s.trim().len() - 1], 1u64 << 10),
        Some(b'm' | b'M') => (&s.trim()[..s.trim().len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s.trim()[..s.trim().len() - 1], 1 << 30),
        _ => (s.trim(), 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("invalid size: {s}"))?;
    match n.checked_mul(mult) {
        Some(b) if b >= 1024 => Ok(b),
        _ => Err(format!("size must be at least 1k and fit in 64 bits, got {s}")),
    }
}

/// Parses memcached-style sizes: plain bytes or with a k/m/g suffix.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1usize << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: usize = num.parse().map_err(|_| format!("invalid size: {s}"))?;
    let bytes = n.checked_mul(mult).ok_or_else(|| format!("size too large: {s}"))?;
    if !(1024..=(1 << 30)).contains(&bytes) {
        return Err(format!("item size must be between 1k and 1g, got {s}"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2097152"), Ok(2 << 20));
        assert!(parse_size("12").is_err());
        assert!(parse_size("2g").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn durations_and_byte_counts() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration("1h"), Ok(3600));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("1w").is_err() && parse_duration("h").is_err() && parse_duration("-1s").is_err());
        assert_eq!(parse_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("100").is_err() && parse_bytes("17179869184g").is_err() && parse_bytes("x").is_err());
        let c = Config::parse_from(["kv-server"]);
        assert_eq!((c.history_secs, c.compact_min_size, c.recover_to), (3600, 64 << 20, None));
        // One-shot: refused in a config file, and meaningless without a log.
        let (_d, p) = write("recover-to = \"2025-06-01T12:00:00Z\"\n");
        let err = Config::load_from(["kv-server", "--config", &p]).unwrap_err().to_string();
        assert!(err.contains("unknown key `recover-to`"), "{err}");
        let err = Config::load_from(["kv-server", "--no-persist", "--recover-to", "1748779200"]).unwrap_err();
        assert!(err.to_string().contains("--recover-to with --no-persist"), "{err}");
    }

    #[test]
    fn defaults_match_memcached() {
        let c = Config::parse_from(["kv-server"]);
        assert_eq!((c.port, c.udp_port, c.memory_limit_mb, c.max_connections), (11211, 11211, 64, 1024));
        assert_eq!(c.item_size_max, 1 << 20);
    }

    #[test]
    fn fsync_policy_names() {
        for (name, want) in
            [("always", FsyncPolicy::Always), ("everysec", FsyncPolicy::Everysec), ("no", FsyncPolicy::No)]
        {
            let c = Config::parse_from(["kv-server", "--fsync", name]);
            assert_eq!(c.fsync, want);
            assert!(c.to_toml().contains(&format!("\nfsync = \"{name}\"\n")), "{name}");
            assert_eq!(crate::persist::LogOptions::from(&c).fsync, want);
        }
        assert!(Config::try_parse_from(["kv-server", "--fsync", "sometimes"]).is_err());
    }

    #[test]
    fn refusals_name_the_flag_and_ignored_flags_are_warned_about() {
        let load = |args: &[&str]| Config::load_from(std::iter::once("kv-server").chain(args.iter().copied()));
        for (args, needle) in [
            (&["-m", "0"][..], "-m 0: the memory limit must be at least 1"),
            (&["-m", "1"], "Cannot set item size limit higher than 1/2 of memory max."),
            (&["-m", "3", "-I", "2m"], "-I 2097152 with -m 3"),
            (&["-c", "0"], "-c 0: Maximum connections must be greater than 0"),
            (&["-t", "0"], "-t 0: Number of threads must be greater than 0"),
            (&["-t", "10000"], "-t 10000: at most 256 worker threads"),
        ] {
            match load(args) {
                Err(ConfigError::Invalid(m)) => assert!(m.contains(needle), "{args:?}: {m:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        let (_d, p) = write("threads = 0\n");
        assert!(matches!(load(&["--config", &p]), Err(ConfigError::Invalid(m)) if m.starts_with("-t 0")));
        assert!(load(&["-m", "2", "-I", "1m", "-t", "256", "-c", "1"]).is_ok());
        let warned = |args: &[&str]| load(args).unwrap().warnings();
        assert!(warned(&["--no-persist", "--no-bpf", "--fsync", "everysec", "--xdp-mode", "generic"]).is_empty());
        assert_eq!(
            warned(&["--no-persist", "--fsync", "always", "--no-bpf", "--xdp-mode", "native", "-t", "65"]),
            [
                "-t 65: setting a high number of worker threads is not recommended; set it to the number of cores \
                 in your machine or less",
                "--fsync always has no effect with --no-persist: nothing is written to disk",
                "--xdp-mode has no effect with --no-bpf: no XDP program is loaded",
            ]
        );
        // A full config file (every key at its default) with --no-bpf / --no-persist on top is quiet.
        let (_d, p) = write(&Config::parse_from(["kv-server"]).to_toml());
        assert!(warned(&["--config", &p, "--no-bpf", "--no-persist"]).is_empty());
    }

    const DEPLOY_TOML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kv-server.toml");

    fn file_keys() -> Vec<String> {
        let cmd = Config::command();
        let keys = cmd.get_arguments().filter_map(|a| a.get_long()).filter(|l| !NOT_FILE_KEYS.contains(l));
        keys.map(String::from).collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kv.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p.to_str().unwrap().to_string())
    }

    #[test]
    fn deploy_toml_is_the_defaults_and_documents_every_key() {
        let mut c = Config::load_from(["kv-server", "--config", DEPLOY_TOML]).unwrap();
        assert_eq!(c.config.take().as_deref(), Some(std::path::Path::new(DEPLOY_TOML)));
        assert_eq!(c, Config::parse_from(["kv-server"]));
        let text = std::fs::read_to_string(DEPLOY_TOML).unwrap();
        for k in file_keys() {
            let documented =
                text.lines().any(|l| l.starts_with(&format!("{k} =")) || l.starts_with(&format!("# {k} =")));
            assert!(documented, "deploy/kv-server.toml lacks key {k}");
        }
    }

    #[test]
    fn print_config_round_trips_with_every_key() {
        let args = ["kv-server", "-p", "1234", "--udp-allow", "10.1.0.0/16", "--udp-allow", "10.2.0.0/16"];
        let c = Config::parse_from(args.iter().chain(&["--no-bpf", "-vv", "--metrics-addr", "127.0.0.1:9"]));
        let printed = c.to_toml();
        let table: toml::Table = printed.parse().unwrap();
        let mut keys: Vec<&String> = table.keys().collect();
        let mut want = file_keys();
        keys.sort();
        want.sort();
        assert_eq!(keys, want.iter().collect::<Vec<_>>());
        let (_d, p) = write(&printed);
        let mut back = Config::load_from(["kv-server", "--config", &p]).unwrap();
        back.config = None;
        assert_eq!(back, c);
        // Defaults: the optional key is a comment, the rest still parses back to the defaults.
        let (_d, p) = write(&Config::parse_from(["kv-server"]).to_toml());
        let mut back = Config::load_from(["kv-server", "--config", &p]).unwrap();
        back.config = None;
        assert_eq!(back, Config::parse_from(["kv-server"]));
    }

    #[test]
    fn flags_override_the_file_and_lists_are_replaced() {
        let (_d, p) =
            write("port = 2000\nthreads = 2\nno-persist = true\nudp-allow = [\"10.1.0.0/16\"]\nverbose = 1\n");
        let c = Config::load_from(["kv-server", "--config", &p]).unwrap();
        assert_eq!((c.port, c.threads, c.no_persist, c.verbose, c.udp_allow.len()), (2000, 2, true, 1, 1));
        let c =
            Config::load_from(["kv-server", "-p", "3000", "--config", &p, "--udp-allow", "10.9.0.0/16", "-v", "-v"])
                .unwrap();
        assert_eq!((c.port, c.threads, c.verbose), (3000, 2, 2));
        assert_eq!(c.udp_allow, vec![parse_cidr("10.9.0.0/16").unwrap()]);
    }

    #[test]
    fn bad_files_name_the_key_and_the_file() {
        for (text, needle) in [
            ("prot = 1\n", "unknown key `prot`"),
            ("config = \"x\"\n", "unknown key `config`"),
            ("port = \"many\"\n", "--port"),
            ("port = 1.5\n", "key `port`: expected a string or an integer, got float"),
            ("no-bpf = \"yes\"\n", "key `no-bpf`: expected true or false"),
            ("udp-allow = \"10.0.0.0/8\"\n", "key `udp-allow`: expected an array"),
            ("udp-allow = [\"10.0.0.0/99\"]\n", "prefix length over 32"),
            ("port = \n", "config file"),
        ] {
            let (_d, p) = write(text);
            match Config::load_from(["kv-server", "--config", &p]) {
                Err(ConfigError::File(m)) => {
                    assert!(m.contains(&p) && m.contains(needle), "{text:?}: {m:?} lacks {needle:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let err = Config::load_from(["kv-server", "--config", "/nonexistent/kv.toml"]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kv.toml"), "{err}");
    }
}
