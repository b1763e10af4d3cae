//! Sharing one interface's XDP hook between kv-server instances (one UDP port each): the first attaches
//! the dispatcher (`kv_dispatch`, kv-ebpf/src/bin/kv-dispatch.rs) and pins its link in bpffs, so that the
//! hook outlives it; each instance puts its own `kv_xdp` into the dispatcher's `PROGS` and its port into
//! `PORTS`; the last one out unpins the link, which detaches the dispatcher.
//!
//! Per interface (and network namespace) there is one directory, `/sys/fs/bpf/kv-server/<netns>-<ifindex>`,
//! holding only the pinned link; it is also the lock (flock) that orders instances joining and leaving.
//! The tables are found through the dispatcher program itself (its map ids), not pinned: when every
//! instance is gone, nothing holds `PROGS` open and the kernel empties it, so a dead instance's program
//! never answers for it. While others run, an instance that died without leaving is removed by the
//! others' sweep (once a second), which checks each slot's owner process.

use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, MapInfo};
use aya::programs::{links::FdLink, ProgramFd, Xdp};
use aya::EbpfLoader;
use kv_common::DISPATCH_SLOTS;

use super::loader::XdpMode;
use super::sys::MapFd;

/// The dispatcher's object, as built for bpfel-unknown-none.
pub static DISPATCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kv-dispatch"));
const DISPATCH_PROGRAM: &str = "kv_dispatch";
const BPFFS: &str = "/sys/fs/bpf";
/// statfs magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The dispatcher's tables, opened by their ids.
struct Tables {
    /// UDP port → slot + 1.
    ports: MapFd<u32, u32>,
    /// Slot → program (update with an fd; lookup gives the program id).
    progs: MapFd<u32, u32>,
    /// Slot → owner: pid << 32 | port; 0 = free.
    owners: MapFd<u32, u64>,
}

impl Tables {
    /// The tables of the dispatcher program `prog_id`, which must be a `kv_dispatch`.
    fn of_program(prog_id: u32) -> Result<Tables> {
        let prog = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == prog_id)
            .with_context(|| format!("program {prog_id} is gone"))?;
        if prog.name_as_str() != Some(DISPATCH_PROGRAM) {
            bail!("program {prog_id} ({:?}) is not kv-server's dispatcher", prog.name_as_str());
        }
        let (mut ports, mut progs, mut owners) = (None, None, None);
        for id in prog.map_ids()?.context("the kernel does not report the dispatcher's maps")? {
            let slot = match MapInfo::from_id(id)?.name_as_str() {
                Some("PORTS") => &mut ports,
                Some("PROGS") => &mut progs,
                Some("OWNERS") => &mut owners,
                _ => continue,
            };
            *slot = Some(MapData::from_id(id)?);
        }
        let open = |m: Option<MapData>, name: &str| m.with_context(|| format!("the dispatcher has no {name} map"));
        Ok(Tables {
            ports: MapFd::new(&open(ports, "PORTS")?)?,
            progs: MapFd::new(&open(progs, "PROGS")?)?,
            owners: MapFd::new(&open(owners, "OWNERS")?)?,
        })
    }

    /// Frees the slots whose owner process is gone; returns how many slots are still held.
    fn sweep(&self) -> u32 {
        let mut held = 0;
        for slot in 0..DISPATCH_SLOTS {
            let owner = self.owners.lookup(&slot).unwrap_or(0);
            if owner == 0 {
                continue;
            }
            if alive((owner >> 32) as i32) {
                held += 1;
            } else {
                self.free(slot, owner);
            }
        }
        held
    }

    /// Removes `slot` (held by `owner`): its port first, so the dispatcher stops choosing it.
    fn free(&self, slot: u32, owner: u64) {
        let port = (owner & 0xffff) as u32;
        if self.ports.lookup(&port).ok() == Some(slot + 1) {
            let _ = self.ports.update(&port, &0);
        }
        let _ = self.progs.delete(&slot);
        let _ = self.owners.update(&slot, &0);
    }
}

/// Whether process `pid` exists.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// The per-interface directory, locked (exclusively) while this value lives.
struct Locked {
    dir: PathBuf,
    _lock: File,
}

impl Locked {
    /// The directory of `iface` in the calling thread's network namespace.
    fn dir_of(iface: &str) -> Result<PathBuf> {
        ensure_bpffs()?;
        // thread-self: a thread may have entered another namespace than the process's main thread.
        let netns = std::fs::metadata("/proc/thread-self/ns/net").context("reading this network namespace")?.ino();
        let ifindex = ifindex(iface)?;
        Ok(Path::new(BPFFS).join("kv-server").join(format!("{netns}-{ifindex}")))
    }

    /// `create`: make the directory if it is missing (joining), else fail (sweeping, leaving).
    fn open(dir: PathBuf, create: bool) -> Result<Locked> {
        if create {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on a descriptor this value owns; it blocks until the other instance is done.
        if unsafe { libc::flock(lock.as_fd().as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).context("locking the interface's kv-server directory");
        }
        Ok(Locked { dir, _lock: lock })
    }

    fn link(&self) -> PathBuf {
        self.dir.join("link")
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it is there.
fn ensure_bpffs() -> Result<()> {
    // SAFETY: statfs fills the struct for a NUL-terminated path; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/sys/fs/bpf";
    // SAFETY: as above; `st` is live and writable.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let r = unsafe { libc::mount(c"bpf".as_ptr(), path.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .context("bpffs is not mounted at /sys/fs/bpf and mounting it failed");
    }
    Ok(())
}

fn ifindex(iface: &str) -> Result<u32> {
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {iface}")),
        i => Ok(i),
    }
}

/// This instance's place on a shared hook; leaves it when dropped (and stops its sweeper).
pub struct SharedHook {
    /// The interface's directory (leaving may happen on a thread in another network namespace).
    dir: PathBuf,
    slot: u32,
    owner: u64,
    stop: Arc<AtomicBool>,
}

impl SharedHook {
    /// Puts `prog` (this instance's `kv_xdp`) behind the dispatcher of `iface` for UDP `port`, attaching
    /// the dispatcher (in `mode`) if no instance has.
    pub fn join(iface: &str, mode: XdpMode, port: u16, prog: &ProgramFd) -> Result<SharedHook> {
        let locked = Locked::open(Locked::dir_of(iface)?, true)?;
        remove_defunct_pins(&locked.dir);
        let tables = match live_pin(&locked, ifindex(iface)?) {
            Some(prog_id) => Tables::of_program(prog_id)?,
            None => attach_dispatcher(&locked, iface, mode)?,
        };
        tables.sweep();
        // A slot still naming our port belongs to an instance that is gone whatever its pid says (a reused
        // pid): this process holds the port's socket (bound before the kernel path starts).
        if let Ok(slot @ 1..) = tables.ports.lookup(&(port as u32)) {
            let owner = tables.owners.lookup(&(slot - 1)).unwrap_or(0);
            tables.free(slot - 1, owner);
        }
        let slot = (0..DISPATCH_SLOTS)
            .find(|s| tables.owners.lookup(s).is_ok_and(|o| o == 0))
            .with_context(|| format!("{DISPATCH_SLOTS} instances already share {iface}"))?;
        let owner = (std::process::id() as u64) << 32 | port as u64;
        tables.owners.update(&slot, &owner)?;
        tables.progs.update(&slot, &(prog.as_fd().as_raw_fd() as u32))?;
        tables.ports.update(&(port as u32), &(slot + 1))?;
        let hook_dir = locked.dir.clone();
        drop(locked);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (stop.clone(), hook_dir.clone());
        std::thread::Builder::new().name("kv-xdp-sweep".into()).spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if flag.load(Ordering::Relaxed) {
                return;
            }
            if let Ok(l) = Locked::open(dir.clone(), false) {
                if let Ok(t) = pinned_tables(&l) {
                    t.sweep();
                }
            }
        })?;
        Ok(SharedHook { dir: hook_dir, slot, owner, stop })
    }
}

/// The dispatcher program id of the pinned link if it is still attached to `ifindex`. A pin left by an
/// instance that died in a network namespace since deleted (its link then attached to nothing, and the
/// namespace's inode number free for reuse) is removed.
fn live_pin(l: &Locked, ifindex: u32) -> Option<u32> {
    let (prog_id, attached_to) = xdp_link_info(&l.link()).ok()?;
    if attached_to == ifindex {
        return Some(prog_id);
    }
    let _ = std::fs::remove_file(l.link());
    None
}

/// Program id and interface index of the XDP bpf link pinned at `path` (`bpf_link_info`: type, id,
/// prog_id, then for XDP links the ifindex at offset 16, 0 once the interface is gone; aya's `LinkInfo`
/// has no ifindex).
fn xdp_link_info(path: &Path) -> std::io::Result<(u32, u32)> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let bpf = |cmd: libc::c_long, attr: &[u64; 3]| {
        // SAFETY: `attr` is a live, 24-byte bpf_attr prefix for the command; the pointers in it (a path,
        // an info buffer) are live for the call, as the callers below guarantee.
        let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), std::mem::size_of_val(attr)) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    use std::os::unix::ffi::OsStrExt as _;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let fd = bpf(BPF_OBJ_GET, &[cpath.as_ptr() as u64, 0, 0])?;
    // SAFETY: the kernel just returned this descriptor to us; it is owned here and closed on drop.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let mut info = [0u32; 16];
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let head = fd.as_raw_fd() as u64 | (std::mem::size_of_val(&info) as u64) << 32;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &[head, info.as_mut_ptr() as u64, 0])?;
    Ok((info[2], info[4]))
}

/// Removes the pins of other interfaces' dispatchers whose interface is gone (a namespace deleted while
/// its instances were killed): each pin holds a dispatcher and its tables in kernel memory.
fn remove_defunct_pins(except: &Path) {
    let Some(root) = except.parent() else { return };
    let Ok(dirs) = std::fs::read_dir(root) else { return };
    for dir in dirs.flatten().map(|d| d.path()).filter(|d| d != except) {
        let link = dir.join("link");
        if xdp_link_info(&link).is_ok_and(|(_, ifindex)| ifindex == 0) {
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// The tables behind the pinned link, if there is one.
fn pinned_tables(l: &Locked) -> Result<Tables> {
    let pinned = aya::programs::links::PinnedLink::from_pin(l.link())?;
    Tables::of_program(FdLink::from(pinned).info()?.program_id())
}

/// Loads and attaches the dispatcher, pins its link; returns its tables.
fn attach_dispatcher(l: &Locked, iface: &str, mode: XdpMode) -> Result<Tables> {
    let mut ebpf = EbpfLoader::new().load(DISPATCH_OBJECT).context("loading the dispatcher")?;
    let prog: &mut Xdp =
        ebpf.program_mut(DISPATCH_PROGRAM).context("dispatcher missing from its object")?.try_into()?;
    prog.load().context("verifying the dispatcher")?;
    let id = prog.attach(iface, mode.into()).map_err(|e| {
        anyhow::anyhow!(
            "attaching XDP to {iface} in {mode:?} mode: {e} (if {iface} has another XDP program, detach it: \
             ip link set dev {iface} xdp off)"
        )
    })?;
    let link: FdLink = prog.take_link(id)?.try_into().context("the XDP attachment is not a bpf link")?;
    let prog_id = link.info()?.program_id();
    link.pin(l.link()).with_context(|| format!("pinning the dispatcher's link at {}", l.link().display()))?;
    Tables::of_program(prog_id)
}

impl Drop for SharedHook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Ok(l) = Locked::open(self.dir.clone(), false) else { return };
        let Ok(t) = pinned_tables(&l) else { return };
        if t.owners.lookup(&self.slot).ok() == Some(self.owner) {
            t.free(self.slot, self.owner);
        }
        // The last one out: unpinning drops the link's last reference, which detaches the dispatcher.
        if t.sweep() == 0 {
            let _ = std::fs::remove_file(l.link());
            let _ = std::fs::remove_dir(&l.dir);
        }
    }
}

/// The program id of the instance serving UDP `port` behind `iface`'s dispatcher, if any (for tests and
/// diagnostics; run in the interface's network namespace).
pub fn served_by(iface: &str, port: u16) -> Result<Option<u32>> {
    let l = Locked::open(Locked::dir_of(iface)?, false)?;
    let t = pinned_tables(&l)?;
    match t.ports.lookup(&(port as u32)) {
        Ok(slot @ 1..) => Ok(t.progs.lookup(&(slot - 1)).ok()),
        _ => Ok(None),
    }
}
