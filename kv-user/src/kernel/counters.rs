//! The XDP program's counters (`COUNTERS`, per CPU) and the kernel path's `stats` lines: the one reader.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;
use kv_common::Counter;

use super::coherence::KernelSync;

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
        let data = MapData::from_fd(std::os::fd::AsFd::as_fd(data.fd()).try_clone_to_owned()?)?;
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

impl crate::stats::Source for KernelStats {
    fn stats(&self, add: &mut dyn FnMut(&str, u64)) {
        for (c, name) in kv_common::COUNTERS {
            add(name, self.counters.get(c));
        }
        let s = &self.sync.stats;
        add("kcache_admissions", s.admissions.load(Relaxed));
        add("kcache_updates", s.updates.load(Relaxed));
        add("kcache_invalidations", s.invalidations.load(Relaxed));
        add("kcache_flushes", s.flushes.load(Relaxed));
        add("kcache_errors", s.errors.load(Relaxed));
    }
}
