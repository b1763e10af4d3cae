//! Sharing one interface's XDP hook between kv-server instances (one UDP port each). The first loads
//! the dispatcher (`kv_dispatch`, kv-ebpf/src/bin/kv-dispatch.rs) and attaches it; each instance puts its
//! own `kv_xdp` into the dispatcher's `PROGS` and its port into `PORTS`, and holds a descriptor of the
//! interface's bpf link and of the dispatcher. The link lives while any instance holds it: when the last
//! one exits, however it exits, the kernel detaches it. And when no instance holds `PROGS` open, the
//! kernel empties it, so a dead instance's program never answers once every instance is gone.
//!
//! While one instance alone holds a slot, the link runs its `kv_xdp` directly instead of the dispatcher
//! ([`Tables::retarget`], on every join, leave and sweep): a tail call, and the dispatcher's own header
//! parse, on every packet of the interface cost that instance nothing. A second instance switches the
//! link back to the dispatcher before it counts on it.
//!
//! Nothing is pinned (bpffs is per mount namespace, and `ip netns exec` or a container gives each
//! process its own): an instance finds the dispatcher by walking the kernel's bpf links for an XDP link
//! on its interface whose program is a `kv_dispatch` whose `HOME` names this network namespace (a link
//! reports only the ifindex), or a program in the `PROGS` of such a dispatcher (still loaded: its
//! instance holds it). Joins and leaves are ordered by a lock that is an abstract unix socket, which is
//! per network namespace and released by the kernel when its process dies. While instances run, each
//! sweeps once a second: a slot whose owner process is gone is freed.
//!
//! Walking links and opening another process's program and maps by id needs CAP_SYS_ADMIN.

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

/// The dispatcher's tables, opened by their ids.
struct Tables {
    /// UDP port → slot + 1.
    ports: MapFd<u32, u32>,
    /// Slot → program (update with an fd; lookup gives the program id).
    progs: MapFd<u32, u32>,
    /// Slot → owner: pid << 32 | port; 0 = free.
    owners: MapFd<u32, u64>,
    /// [0]: netns inode << 32 | ifindex.
    home: MapFd<u32, u64>,
    /// The dispatcher itself, held so that it stays loaded (and findable) while the link runs a lone
    /// instance's `kv_xdp` instead.
    dispatcher: OwnedFd,
    dispatcher_id: u32,
}

impl Tables {
    /// The tables of program `prog_id` if it is a `kv_dispatch` (at `home`, where given: checked before
    /// `PROGS` is opened).
    fn of_program(prog_id: u32, home: Option<u64>) -> Result<Tables> {
        let prog = aya::programs::loaded_programs()
            .filter_map(|p| p.ok())
            .find(|p| p.id() == prog_id)
            .with_context(|| format!("program {prog_id} is gone"))?;
        if prog.name_as_str() != Some(DISPATCH_PROGRAM) {
            bail!("program {prog_id} ({:?}) is not kv-server's dispatcher", prog.name_as_str());
        }
        let (mut ports, mut progs, mut owners, mut home_map) = (None, None, None, None);
        for id in prog.map_ids()?.context("the kernel does not report the dispatcher's maps")? {
            let slot = match MapInfo::from_id(id)?.name_as_str() {
                Some("PORTS") => &mut ports,
                Some("PROGS") => &mut progs,
                Some("OWNERS") => &mut owners,
                Some("HOME") => &mut home_map,
                _ => continue,
            };
            *slot = Some(MapData::from_id(id)?);
        }
        let open = |m: Option<MapData>, name: &str| m.with_context(|| format!("the dispatcher has no {name} map"));
        let home_map = MapFd::new(&open(home_map, "HOME")?)?;
        if let Some(want) = home {
            if home_map.lookup(&0).ok() != Some(want) {
                bail!("dispatcher {prog_id} serves another interface");
            }
        }
        Ok(Tables {
            ports: MapFd::new(&open(ports, "PORTS")?)?,
            progs: MapFd::new(&open(progs, "PROGS")?)?,
            owners: MapFd::new(&open(owners, "OWNERS")?)?,
            home: home_map,
            dispatcher: prog_fd(prog_id)?,
            dispatcher_id: prog_id,
        })
    }

    /// Points `link` at what the held slots need: the lone instance's `kv_xdp` while one slot is held,
    /// else the dispatcher. Call with the lock held, after any change to the slots.
    fn retarget(&self, link: &OwnedFd) -> Result<()> {
        let held: Vec<u32> = (0..DISPATCH_SLOTS).filter(|s| self.owners.lookup(s).is_ok_and(|o| o != 0)).collect();
        let want = match held[..] {
            [] => return Ok(()),
            [lone] => self.progs.lookup(&lone).context("the lone instance's program is missing from PROGS")?,
            _ => self.dispatcher_id,
        };
        let (_, current, _) = link_info(link).context("reading the XDP link")?;
        if current == want {
            return Ok(());
        }
        let lone;
        let fd = if want == self.dispatcher_id {
            self.dispatcher.as_raw_fd()
        } else {
            lone = prog_fd(want)?;
            lone.as_raw_fd()
        };
        // BPF_LINK_UPDATE: link_fd (u32), new_prog_fd (u32), flags, old_prog_fd: under the lock, no other
        // instance moves the link meanwhile.
        bpf(BPF_LINK_UPDATE, &mut [link.as_raw_fd() as u64 | (fd as u64) << 32, 0, 0])
            .with_context(|| format!("pointing the XDP link at program {want}"))?;
        Ok(())
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

/// Where an interface is: its network namespace's inode and its index, as `HOME` holds them.
fn home_of(iface: &str) -> Result<u64> {
    // thread-self: a thread may have entered another namespace than the process's main thread.
    let netns = std::fs::metadata("/proc/thread-self/ns/net").context("reading this network namespace")?.ino();
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => return Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {iface}")),
        i => i,
    };
    Ok(netns << 32 | ifindex as u64)
}

/// The lock of one interface's dispatcher: an abstract unix socket named after it, bound while held.
/// Abstract names are per network namespace, and the kernel releases the name when the process dies.
struct Lock {
    _bound: OwnedFd,
}

impl Lock {
    fn take(home: u64) -> Result<Lock> {
        let name = format!("kv-server-xdp-{}", home & 0xffff_ffff);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // SAFETY: plain socket(2); the descriptor is owned right below.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("creating the dispatcher lock");
            }
            // SAFETY: a descriptor socket(2) just returned to us.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_un is plain data; zeroed is a valid value (family set below).
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            // sun_path[0] = 0: the abstract namespace.
            for (d, s) in addr.sun_path[1..].iter_mut().zip(name.bytes()) {
                *d = s as libc::c_char;
            }
            let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
            // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes.
            if unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, len) } == 0 {
                return Ok(Lock { _bound: fd });
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EADDRINUSE) || Instant::now() > deadline {
                return Err(e).context("taking the dispatcher lock");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// bpf(2) with a 24-byte attribute block (the commands below use no more).
fn bpf(cmd: libc::c_long, attr: &mut [u64; 3]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, writable 24-byte bpf_attr prefix; the commands used here either take
    // ids and flags only, or a pointer to an info buffer the caller keeps live for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// A descriptor of program `id`.
fn prog_fd(id: u32) -> Result<OwnedFd> {
    // BPF_PROG_GET_FD_BY_ID: prog_id (u32), next_id, open_flags.
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut [id as u64, 0, 0]).with_context(|| format!("opening program {id}"))?;
    // SAFETY: the kernel just returned this descriptor to us; owned here, closed on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Type, program id and (for an XDP link) interface index of a bpf link: `bpf_link_info` is type, id,
/// prog_id, then the type's fields (XDP: ifindex at offset 16, 0 once the interface is gone).
fn link_info(fd: &OwnedFd) -> std::io::Result<(u32, u32, u32)> {
    let mut info = [0u32; 16];
    // BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let head = fd.as_raw_fd() as u64 | (std::mem::size_of_val(&info) as u64) << 32;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut [head, info.as_mut_ptr() as u64, 0])?;
    Ok((info[0], info[2], info[4]))
}

/// The dispatcher attached at `home` (its link, held open, and its tables), if there is one.
fn find(home: u64) -> Option<(OwnedFd, Tables)> {
    let ifindex = (home & 0xffff_ffff) as u32;
    let mut id = 0u32;
    loop {
        // BPF_LINK_GET_NEXT_ID: start_id (u32), next_id (u32, out).
        let mut attr = [id as u64, 0, 0];
        bpf(BPF_LINK_GET_NEXT_ID, &mut attr).ok()?;
        id = (attr[0] >> 32) as u32;
        // BPF_LINK_GET_FD_BY_ID: link_id (u32).
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, &mut [id as u64, 0, 0]) else { continue };
        // SAFETY: the kernel just returned this descriptor to us; owned here, closed on drop.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        match link_info(&fd) {
            Ok((BPF_LINK_TYPE_XDP, prog, at)) if at == ifindex => {
                // The dispatcher, or the lone instance's program that runs in its place.
                if let Some(t) = Tables::of_program(prog, Some(home)).ok().or_else(|| dispatcher_of(home, prog)) {
                    return Some((fd, t));
                }
            }
            _ => {}
        }
    }
}

/// The loaded dispatcher at `home` that has program `prog` in its `PROGS`, if any.
fn dispatcher_of(home: u64, prog: u32) -> Option<Tables> {
    aya::programs::loaded_programs()
        .filter_map(|p| p.ok())
        .filter(|p| p.name_as_str() == Some(DISPATCH_PROGRAM))
        .filter_map(|p| Tables::of_program(p.id(), Some(home)).ok())
        .find(|t| (0..DISPATCH_SLOTS).any(|slot| t.progs.lookup(&slot).ok() == Some(prog)))
}

/// Loads and attaches the dispatcher; returns its link and tables.
fn attach_dispatcher(iface: &str, mode: XdpMode, home: u64) -> Result<(OwnedFd, Tables)> {
    let mut ebpf = EbpfLoader::new().load(DISPATCH_OBJECT).context("loading the dispatcher")?;
    let prog: &mut Xdp =
        ebpf.program_mut(DISPATCH_PROGRAM).context("dispatcher missing from its object")?.try_into()?;
    prog.load().context("verifying the dispatcher")?;
    let prog_id = prog.info()?.id();
    let tables = Tables::of_program(prog_id, None)?;
    tables.home.update(&0, &home)?;
    let id = prog.attach(iface, mode.into()).map_err(|e| {
        anyhow::anyhow!(
            "attaching XDP to {iface} in {mode:?} mode: {e} (if {iface} has another XDP program, detach it: \
             ip link set dev {iface} xdp off)"
        )
    })?;
    let link: FdLink = prog.take_link(id)?.try_into().context("the XDP attachment is not a bpf link")?;
    // A descriptor of our own: the link stays attached while it is open, whatever happens to `ebpf`.
    Ok((link_fd(&link)?, tables))
}

/// A descriptor of `link`'s bpf link, found by its id (aya's FdLink does not expose its descriptor).
fn link_fd(link: &FdLink) -> Result<OwnedFd> {
    let id = link.info()?.id();
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut [id as u64, 0, 0])?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// This instance's place on a shared hook; leaves it when dropped (and stops its sweeper).
pub struct SharedHook {
    home: u64,
    slot: u32,
    owner: u64,
    /// The dispatcher's tables, open from join to drop: this instance's descriptors are among the user
    /// references that keep `PROGS` filled, and none is re-opened on the way out (see [`Drop`]).
    tables: Arc<Tables>,
    /// Dropping it wakes the sweeper, which then exits (closing its descriptors of the tables).
    stop: Option<mpsc::Sender<()>>,
    sweeper: Option<JoinHandle<()>>,
    /// Keeps the link attached while this instance runs.
    link: OwnedFd,
}

impl SharedHook {
    /// Puts `prog` (this instance's `kv_xdp`) behind the dispatcher of `iface` for UDP `port`, attaching
    /// the dispatcher (in `mode`) if no instance has.
    pub fn join(iface: &str, mode: XdpMode, port: u16, prog: &ProgramFd) -> Result<SharedHook> {
        let home = home_of(iface)?;
        let lock = Lock::take(home)?;
        let (link, tables) = match find(home) {
            Some(found) => found,
            None => attach_dispatcher(iface, mode, home)?,
        };
        tables.sweep();
        // A slot still naming our port belongs to an instance that is gone whatever its pid says (a
        // reused pid): this process holds the port's socket (bound before the kernel path starts).
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
        if let Err(e) = tables.retarget(&link) {
            tables.free(slot, owner);
            let _ = tables.retarget(&link);
            return Err(e);
        }
        drop(lock);
        let tables = Arc::new(tables);
        let (stop, stopped) = mpsc::channel::<()>();
        let sweeping = tables.clone();
        let link_of_sweeper = link.try_clone()?;
        let sweeper = std::thread::Builder::new().name("kv-xdp-sweep".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(Duration::from_secs(1)) {
                if let Ok(_lock) = Lock::take(home) {
                    sweeping.sweep();
                    if let Err(e) = sweeping.retarget(&link_of_sweeper) {
                        log::warn!("XDP hook: {e:#}");
                    }
                }
            }
        })?;
        Ok(SharedHook { home, slot, owner, tables, stop: Some(stop), sweeper: Some(sweeper), link })
    }
}

impl Drop for SharedHook {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(sweeper) = self.sweeper.take() {
            let _ = sweeper.join();
        }
        if let Ok(_lock) = Lock::take(self.home) {
            if self.tables.owners.lookup(&self.slot).ok() == Some(self.owner) {
                self.tables.free(self.slot, self.owner);
            }
            // A lone instance left behind gets the link to itself.
            if let Err(e) = self.tables.retarget(&self.link) {
                log::warn!("XDP hook: {e:#}");
            }
        }
        // Closing the tables and `link` next: the last instance's close detaches the link. Nothing
        // here opens `PROGS` anew: taking a user reference of a program array whose last one just went,
        // and dropping it, queues the kernel's deferred clear a second time, and the map reference taken
        // for that one is never dropped (prog_array_map_clear), leaking the array.
    }
}

/// The program id of the instance serving UDP `port` behind `iface`'s dispatcher, if any (for tests and
/// diagnostics; run in the interface's network namespace).
pub fn served_by(iface: &str, port: u16) -> Result<Option<u32>> {
    let Some((_, t)) = find(home_of(iface)?) else { return Ok(None) };
    match t.ports.lookup(&(port as u32)) {
        Ok(slot @ 1..) => Ok(t.progs.lookup(&(slot - 1)).ok()),
        _ => Ok(None),
    }
}
