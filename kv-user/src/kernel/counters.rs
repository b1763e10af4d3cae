//! The XDP program's counters (`COUNTERS`, per CPU) and the kernel path's `stats` lines: the one reader.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;
use kv_common::Counter;

use super::coherence::{KernelSync, SyncStats};
use crate::stats::{self, Desc, Kind};

/// The XDP program's per-CPU counters, summed over CPUs; shareable across threads.
pub struct KernelCounters {
    arr: PerCpuArray<MapData, u64>,
}

impl KernelCounters {
    pub(super) fn open(ebpf: &Ebpf) -> Result<KernelCounters> {
        let data = match ebpf.map("COUNTERS").context("COUNTERS map missing")? {
            Map::PerCpuArray(d) => d,
            _ => anyhow::bail!("COUNTERS: not a per-CPU array"),
        };
        // A map of our own over a duplicate of the fd: the reader outlives borrows of `ebpf`.
        Self::from_map(MapData::from_fd(std::os::fd::AsFd::as_fd(data.fd()).try_clone_to_owned()?)?)
    }

    /// A reader of a `COUNTERS` map opened some other way (tests read another process's by its id).
    pub fn from_map(data: MapData) -> Result<KernelCounters> {
        Ok(KernelCounters { arr: PerCpuArray::try_from(Map::PerCpuArray(data))? })
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.arr.get(&(c as u32), 0).map_or(0, |v| v.iter().sum())
    }
}

/// `stats` lines of the kernel path: the XDP counters and the synchronisation counters.
pub struct KernelStats {
    pub counters: KernelCounters,
    pub sync: Arc<KernelSync>,
}

/// `/metrics` help of the XDP counters that have their own series (the `xdp_pass_<reason>` lines form
/// one labelled family there).
fn xdp_help(c: Counter) -> Option<&'static str> {
    match c {
        Counter::Seen => Some("Packets the XDP program looked at."),
        Counter::Hits => Some("Requests answered from the kernel cache."),
        Counter::HitKeys => Some("Keys answered from the kernel cache."),
        Counter::ToTc => {
            Some("Requests whose reply needed more room than the XDP frame had, handed to the TC program.")
        }
        Counter::TcHits => Some("Requests the TC program answered (counted in xdp_hits too)."),
        Counter::TcHandoffs => Some(
            "TC replies sent as the XDP program had assembled them, keys not looked up again (counted in \
             xdp_tc_hits too).",
        ),
        Counter::Ipv6Hits => Some("Requests over IPv6 answered in the kernel (counted in xdp_hits too)."),
        Counter::BinHits => Some("Binary-protocol get/getk requests answered in the kernel (counted in xdp_hits too)."),
        _ => None,
    }
}

/// The synchronisation counters: name, help, where it is read.
type SyncLine = (&'static str, &'static str, fn(&SyncStats) -> &AtomicU64);
const SYNC_LINES: [SyncLine; 5] = [
    ("kcache_admissions", "Items added to the kernel cache.", |s| &s.admissions),
    ("kcache_updates", "Kernel cache entries rewritten by a write.", |s| &s.updates),
    ("kcache_invalidations", "Kernel cache entries removed by a write, eviction or expiry.", |s| &s.invalidations),
    ("kcache_flushes", "Whole kernel cache flushes.", |s| &s.flushes),
    ("kcache_errors", "Failed kernel cache updates.", |s| &s.errors),
];

impl stats::Source for KernelStats {
    fn stats(&self, add: &mut dyn FnMut(&Desc<'_>, u64)) {
        for (c, name) in kv_common::COUNTERS {
            add(&Desc { name, kind: Kind::Counter, help: xdp_help(c) }, self.counters.get(c));
        }
        for (name, help, read) in SYNC_LINES {
            add(&Desc { name, kind: Kind::Counter, help: Some(help) }, read(&self.sync.stats).load(Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_described() {
        assert_eq!(xdp_help(Counter::Hits), Some("Requests answered from the kernel cache."));
        assert_eq!(xdp_help(Counter::PassMiss), None);
        // Every hit counter has its own described series (the pass reasons form one family).
        for c in [Counter::Hits, Counter::TcHits, Counter::Ipv6Hits, Counter::BinHits] {
            assert!(xdp_help(c).is_some_and(|h| h.contains("answered")), "{c:?}");
        }
        assert_eq!(Counter::BinHits.name(), "xdp_hits_binary");
        let s = SyncStats::default();
        s.flushes.fetch_add(3, Relaxed);
        let names: Vec<_> = SYNC_LINES.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(
            names,
            ["kcache_admissions", "kcache_updates", "kcache_invalidations", "kcache_flushes", "kcache_errors"]
        );
        assert_eq!(SYNC_LINES[3].2(&s).load(Relaxed), 3);
    }
}
