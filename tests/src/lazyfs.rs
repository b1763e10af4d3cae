//! A FUSE filesystem that forgets what was not synced, for simulating power loss (as Jepsen's LazyFS does).
//!
//! Everything lives in memory in a [`Disk`] that outlives each mount. Every node has two states: the one
//! processes see, and the durable one a power cut leaves:
//! - a file's bytes become durable only when `fsync`/`fdatasync` reaches that file;
//! - a directory's entries (create, mkdir, link, unlink, rename) become durable only when that directory is
//!   fsynced (`fsyncdir`). This is the strict POSIX rule: fsyncing a new file does not make its name durable,
//!   so a file synced but never named durably is gone after a crash.
//!
//! [`LazyFs::crash`] stops serving (every request from then on fails with EIO), reverts every node to its
//! durable state (optionally keeping a torn prefix of the last unsynced write) and drops the nodes no durable
//! name reaches. [`LazyFs::remount`] serves that state again. A crash can also be armed to fire from inside
//! the filesystem at the n-th operation after a file of a given name is created ([`LazyFs::arm`]), which
//! lands it at a chosen point of, say, a compaction.
//!
//! The kernel is kept out of the way: files are opened with `FOPEN_DIRECT_IO` (no page cache, so every
//! `write(2)` reaches this layer at once and every `read(2)` is answered from it) and attributes and entries
//! are never cached (TTL 0).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow,
};
use libc::{EEXIST, EINVAL, EIO, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY};

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;

struct Node {
    dir: bool,
    perm: u16,
    /// Files: the bytes processes see, and the bytes a crash leaves.
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Lowest offset written (or truncated to) since the last fsync; `u64::MAX` when clean.
    dirty_from: u64,
    /// Directories: the entries processes see, and those a crash leaves.
    entries: BTreeMap<OsString, u64>,
    durable_entries: BTreeMap<OsString, u64>,
}

impl Node {
    fn new(dir: bool, perm: u16) -> Node {
        Node {
            dir,
            perm,
            data: Vec::new(),
            durable: Vec::new(),
            dirty_from: u64::MAX,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
        }
    }
}

/// What a crash did, for the test's report.
#[derive(Debug, Default, Clone)]
pub struct CrashReport {
    /// Files whose unsynced bytes were dropped, and how many bytes in all.
    pub files_reverted: usize,
    pub bytes_lost: u64,
    /// Directory entries that existed but were not durable (dropped), or were removed but came back.
    pub entries_reverted: usize,
    /// Bytes of the last unsynced write kept as a torn prefix (0: none kept).
    pub torn_bytes: u64,
    /// Whether the crash was fired from inside by [`LazyFs::arm`], and the events seen before it.
    pub armed: bool,
    pub events: Vec<String>,
}

/// A crash armed to fire from inside: counting starts when a file named `after_create` is created, and the
/// crash happens instead of the `ops`-th operation after it that is a write or fsync of that file or a
/// directory change (create, link, unlink, rename, fsyncdir). Other files' writes are not counted, so the
/// count follows that file's life whatever else is being written.
struct Armed {
    after_create: OsString,
    started: bool,
    file: Option<u64>,
    ops: u32,
    events: Vec<String>,
}

/// The simulated disk, shared by every mount of it.
pub struct Disk {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Serving or crashed (every request fails with EIO until the next mount).
    dead: bool,
    /// The last write not yet synced: (inode, offset, length).
    last_write: Option<(u64, u64, u64)>,
    armed: Option<Armed>,
    /// Set by an armed crash; the test waits on it.
    fired: Option<CrashReport>,
    /// Counters for the report.
    pub fsyncs: u64,
    pub dir_fsyncs: u64,
}

/// A mounted (or crashed) [`Disk`].
pub struct LazyFs {
    disk: Arc<(Mutex<Disk>, Condvar)>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

/// Whether this machine can mount FUSE: /dev/fuse exists (root needs no fusermount).
pub fn available() -> bool {
    Path::new("/dev/fuse").exists()
}

impl LazyFs {
    /// Mounts a fresh, empty disk at `mountpoint` (an existing empty directory).
    pub fn mount(mountpoint: &Path) -> std::io::Result<LazyFs> {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(true, 0o755));
        let disk = Disk {
            nodes,
            next_ino: ROOT + 1,
            dead: false,
            last_write: None,
            armed: None,
            fired: None,
            fsyncs: 0,
            dir_fsyncs: 0,
        };
        let mut fs =
            LazyFs { disk: Arc::new((Mutex::new(disk), Condvar::new())), mountpoint: mountpoint.into(), session: None };
        fs.remount()?;
        Ok(fs)
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        self.disk.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves the disk (its durable state, after a crash) at the mount point again.
    pub fn remount(&mut self) -> std::io::Result<()> {
        assert!(self.session.is_none(), "already mounted");
        self.lock().dead = false;
        let opts = [MountOption::FSName("lazyfs".into()), MountOption::DefaultPermissions];
        let session = fuser::spawn_mount2(Serve(self.disk.clone()), &self.mountpoint, &opts)?;
        self.session = Some(session);
        Ok(())
    }

    /// Power cut: stops serving and reverts to the durable state. With `torn` = Some(r), keeps the first
    /// `r % len` bytes of the last unsynced write (and the unsynced bytes before it in that file), as a
    /// disk that wrote back part of its cache in order would. No effect (and None) if already crashed.
    pub fn crash(&self, torn: Option<u64>) -> Option<CrashReport> {
        crash(&mut self.lock(), torn)
    }

    /// Arms a crash at the `ops`-th mutating operation after a file named `after_create` is created; the
    /// crash tears nothing. [`LazyFs::wait_fired`] waits for it.
    pub fn arm(&self, after_create: &str, ops: u32) {
        let mut d = self.lock();
        d.fired = None;
        d.armed = Some(Armed {
            after_create: after_create.into(),
            started: false,
            file: None,
            ops: ops.max(1),
            events: Vec::new(),
        });
    }

    /// Waits up to `limit` for the armed crash; None if it did not fire (it is disarmed then).
    pub fn wait_fired(&self, limit: Duration) -> Option<CrashReport> {
        let (m, cv) = &*self.disk;
        let g = m.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = cv.wait_timeout_while(g, limit, |d| d.fired.is_none()).unwrap_or_else(|e| e.into_inner());
        g.armed = None;
        g.fired.take()
    }

    /// Unmounts (lazily, so a descriptor still closing cannot keep it busy) and stops the session thread.
    pub fn unmount(&mut self) {
        if let Some(s) = self.session.take() {
            let path = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2 with a valid NUL-terminated path; failure (already unmounted) is harmless.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            s.join();
        }
    }

    /// (file fsyncs, directory fsyncs) served so far.
    pub fn syncs(&self) -> (u64, u64) {
        let d = self.lock();
        (d.fsyncs, d.dir_fsyncs)
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.unmount();
    }
}

fn crash(d: &mut Disk, torn: Option<u64>) -> Option<CrashReport> {
    if d.dead {
        return None;
    }
    d.dead = true;
    let mut rep = CrashReport::default();
    if let (Some(r), Some((ino, off, len))) = (torn, d.last_write) {
        if let Some(n) = d.nodes.get_mut(&ino) {
            let end = (off + r % len.max(1)).min(n.data.len() as u64) as usize;
            let from = (n.dirty_from.min(off) as usize).min(end);
            if n.durable.len() < end {
                n.durable.resize(end, 0);
            }
            n.durable[from..end].copy_from_slice(&n.data[from..end]);
            rep.torn_bytes = (end as u64).saturating_sub(off);
        }
    }
    d.last_write = None;
    for n in d.nodes.values_mut() {
        if n.data != n.durable {
            rep.files_reverted += 1;
            rep.bytes_lost += n.data.len().abs_diff(n.durable.len()).max(1) as u64;
            n.data = n.durable.clone();
        }
        n.dirty_from = u64::MAX;
        if n.entries != n.durable_entries {
            let changed = n.entries.iter().filter(|(k, v)| n.durable_entries.get(*k) != Some(v)).count()
                + n.durable_entries.keys().filter(|k| !n.entries.contains_key(*k)).count();
            rep.entries_reverted += changed;
            n.entries = n.durable_entries.clone();
        }
    }
    // Nodes no durable name reaches are gone.
    let mut live = vec![ROOT];
    let mut seen = std::collections::HashSet::from([ROOT]);
    while let Some(i) = live.pop() {
        for &c in d.nodes[&i].entries.values() {
            if seen.insert(c) {
                live.push(c);
            }
        }
    }
    d.nodes.retain(|i, _| seen.contains(i));
    Some(rep)
}

/// The FUSE side: one per mount, sharing the disk.
struct Serve(Arc<(Mutex<Disk>, Condvar)>);

type Res<T> = Result<T, i32>;

impl Serve {
    /// The disk, if it is serving; counts `op` toward an armed crash when `mutating` (and, for a file's
    /// write or fsync, `file`, when it is the armed one).
    fn disk(&self, op: &str, name: Option<&OsStr>, mutating: bool) -> Res<MutexGuard<'_, Disk>> {
        self.disk_for(op, name, None, mutating)
    }

    fn disk_for(&self, op: &str, name: Option<&OsStr>, file: Option<u64>, mutating: bool) -> Res<MutexGuard<'_, Disk>> {
        let mut d = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if d.dead {
            return Err(EIO);
        }
        if let Some(a) = d.armed.as_mut() {
            if mutating && a.started && (file.is_none() || file == a.file) {
                a.events.push(format!("{op} {}", name.map(|n| n.to_string_lossy()).unwrap_or_default()));
                a.ops -= 1;
                if a.ops == 0 {
                    let events = std::mem::take(&mut a.events);
                    d.armed = None;
                    let mut rep = crash(&mut d, None).expect("serving");
                    rep.armed = true;
                    rep.events = events;
                    d.fired = Some(rep);
                    self.0 .1.notify_all();
                    return Err(EIO);
                }
            }
            if op == "create" && name == Some(a.after_create.as_os_str()) && !a.started {
                a.started = true;
                a.events.push(format!("create {}", a.after_create.to_string_lossy()));
            }
        }
        Ok(d)
    }
}

fn attr(ino: u64, n: &Node) -> FileAttr {
    let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let size = if n.dir { 4096 } else { n.data.len() as u64 };
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: if n.dir { FileType::Directory } else { FileType::RegularFile },
        perm: n.perm,
        nlink: if n.dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Disk {
    fn node(&self, ino: u64) -> Res<&Node> {
        self.nodes.get(&ino).ok_or(ENOENT)
    }
    fn node_mut(&mut self, ino: u64) -> Res<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(ENOENT)
    }
    fn dir_mut(&mut self, ino: u64) -> Res<&mut Node> {
        let n = self.node_mut(ino)?;
        if n.dir {
            Ok(n)
        } else {
            Err(ENOTDIR)
        }
    }
    fn lookup(&self, parent: u64, name: &OsStr) -> Res<u64> {
        self.node(parent)?.entries.get(name).copied().ok_or(ENOENT)
    }
    /// A new node named `name` in `parent` (visible now, durable once `parent` is fsynced).
    fn make(&mut self, parent: u64, name: &OsStr, dir: bool, mode: u32) -> Res<FileAttr> {
        if self.dir_mut(parent)?.entries.contains_key(name) {
            return Err(EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let n = Node::new(dir, (mode & 0o7777) as u16);
        let a = attr(ino, &n);
        self.nodes.insert(ino, n);
        self.dir_mut(parent)?.entries.insert(name.into(), ino);
        Ok(a)
    }
    fn truncate(&mut self, ino: u64, size: u64) -> Res<()> {
        let n = self.node_mut(ino)?;
        if n.dir {
            return Err(EISDIR);
        }
        n.data.resize(size as usize, 0);
        n.dirty_from = n.dirty_from.min(size);
        Ok(())
    }
    fn write(&mut self, ino: u64, offset: u64, data: &[u8], append: bool) -> Res<u32> {
        let n = self.node_mut(ino)?;
        let off = if append { n.data.len() } else { offset as usize };
        let end = off + data.len();
        if n.data.len() < end {
            n.data.resize(end, 0);
        }
        n.data[off..end].copy_from_slice(data);
        n.dirty_from = n.dirty_from.min(off as u64);
        self.last_write = Some((ino, off as u64, data.len() as u64));
        Ok(data.len() as u32)
    }
    fn fsync(&mut self, ino: u64) -> Res<()> {
        self.fsyncs += 1;
        let n = self.node_mut(ino)?;
        if n.dirty_from != u64::MAX {
            let from = (n.dirty_from as usize).min(n.data.len());
            n.durable.resize(n.data.len(), 0);
            n.durable[from..].copy_from_slice(&n.data[from..]);
            n.dirty_from = u64::MAX;
        }
        if self.last_write.is_some_and(|(i, _, _)| i == ino) {
            self.last_write = None;
        }
        Ok(())
    }
    fn rename(&mut self, p: u64, name: &OsStr, np: u64, newname: &OsStr, flags: u32) -> Res<()> {
        let ino = self.lookup(p, name)?;
        self.dir_mut(np)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(EINVAL);
        }
        if let Some(&old) = self.node(np)?.entries.get(newname) {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(EEXIST);
            }
            let (src_dir, dst) = (self.node(ino)?.dir, self.node(old)?);
            if dst.dir && !src_dir {
                return Err(EISDIR);
            }
            if dst.dir && !dst.entries.is_empty() {
                return Err(ENOTEMPTY);
            }
        }
        self.dir_mut(p)?.entries.remove(name);
        self.dir_mut(np)?.entries.insert(newname.into(), ino);
        Ok(())
    }
}

/// Replies with the result of `f`, or its error number.
macro_rules! answer {
    ($reply:expr, $r:expr, |$v:ident| $ok:expr) => {
        match $r {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for Serve {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let r = self.disk("lookup", None, false).and_then(|d| {
            let ino = d.lookup(parent, name)?;
            Ok(attr(ino, d.node(ino)?))
        });
        answer!(reply, r, |a| reply.entry(&TTL, &a, 0));
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        let r = self.disk("getattr", None, false).and_then(|d| Ok(attr(ino, d.node(ino)?)));
        answer!(reply, r, |a| reply.attr(&TTL, &a));
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let r = self.disk_for("setattr", None, Some(ino), size.is_some()).and_then(|mut d| {
            if let Some(s) = size {
                d.truncate(ino, s)?;
            }
            if let Some(m) = mode {
                d.node_mut(ino)?.perm = (m & 0o7777) as u16;
            }
            Ok(attr(ino, d.node(ino)?))
        });
        answer!(reply, r, |a| reply.attr(&TTL, &a));
    }

    fn mkdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let r = self.disk("mkdir", Some(name), true).and_then(|mut d| d.make(parent, name, true, mode & !umask));
        answer!(reply, r, |a| reply.entry(&TTL, &a, 0));
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.disk("unlink", Some(name), true).and_then(|mut d| {
            let ino = d.lookup(parent, name)?;
            if d.node(ino)?.dir {
                return Err(EISDIR);
            }
            d.dir_mut(parent)?.entries.remove(name);
            Ok(())
        });
        answer!(reply, r, |_v| reply.ok());
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let r = self.disk("rmdir", Some(name), true).and_then(|mut d| {
            let ino = d.lookup(parent, name)?;
            let n = d.node(ino)?;
            if !n.dir {
                return Err(ENOTDIR);
            }
            if !n.entries.is_empty() {
                return Err(ENOTEMPTY);
            }
            d.dir_mut(parent)?.entries.remove(name);
            Ok(())
        });
        answer!(reply, r, |_v| reply.ok());
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .disk("rename", Some(newname), true)
            .and_then(|mut d| d.rename(parent, name, newparent, newname, flags));
        answer!(reply, r, |_v| reply.ok());
    }

    fn link(&mut self, _req: &Request<'_>, ino: u64, newparent: u64, newname: &OsStr, reply: ReplyEntry) {
        let r = self.disk("link", Some(newname), true).and_then(|mut d| {
            if d.node(ino)?.dir {
                return Err(libc::EPERM);
            }
            let p = d.dir_mut(newparent)?;
            if p.entries.contains_key(newname) {
                return Err(EEXIST);
            }
            p.entries.insert(newname.into(), ino);
            Ok(attr(ino, d.node(ino)?))
        });
        answer!(reply, r, |a| reply.entry(&TTL, &a, 0));
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let trunc = flags & libc::O_TRUNC != 0;
        let r = self.disk_for("open", None, Some(ino), trunc).and_then(|mut d| {
            if trunc {
                d.truncate(ino, 0)?;
            }
            d.node(ino).map(|_| ())
        });
        answer!(reply, r, |_v| reply.opened(0, fuser::consts::FOPEN_DIRECT_IO));
    }

    fn create(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let r = self.disk("create", Some(name), true).and_then(|mut d| match d.lookup(parent, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(EEXIST),
            Ok(ino) => {
                if flags & libc::O_TRUNC != 0 {
                    d.truncate(ino, 0)?;
                }
                Ok(attr(ino, d.node(ino)?))
            }
            Err(_) => {
                let a = d.make(parent, name, false, mode & !umask)?;
                if let Some(armed) =
                    d.armed.as_mut().filter(|a| a.started && a.file.is_none() && a.after_create == name)
                {
                    armed.file = Some(a.ino);
                }
                Ok(a)
            }
        });
        answer!(reply, r, |a| reply.created(&TTL, &a, 0, 0, fuser::consts::FOPEN_DIRECT_IO));
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let r = self.disk("read", None, false).and_then(|d| {
            let n = d.node(ino)?;
            let from = (offset as usize).min(n.data.len());
            let to = (from + size as usize).min(n.data.len());
            Ok(n.data[from..to].to_vec())
        });
        answer!(reply, r, |v| reply.data(&v));
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let append = flags & libc::O_APPEND != 0;
        let r =
            self.disk_for("write", None, Some(ino), true).and_then(|mut d| d.write(ino, offset as u64, data, append));
        answer!(reply, r, |n| reply.written(n));
    }

    fn flush(&mut self, _req: &Request<'_>, _ino: u64, _fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.disk_for("fsync", None, Some(ino), true).and_then(|mut d| d.fsync(ino));
        answer!(reply, r, |_v| reply.ok());
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        let r = self.disk("opendir", None, false).and_then(|d| if d.node(ino)?.dir { Ok(()) } else { Err(ENOTDIR) });
        answer!(reply, r, |_v| reply.opened(0, 0));
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let r = self.disk("readdir", None, false).and_then(|d| {
            let n = d.node(ino)?;
            let mut all =
                vec![(ino, FileType::Directory, OsString::from(".")), (ROOT, FileType::Directory, "..".into())];
            for (name, &c) in &n.entries {
                let kind = if d.node(c)?.dir { FileType::Directory } else { FileType::RegularFile };
                all.push((c, kind, name.clone()));
            }
            Ok(all)
        });
        match r {
            Ok(all) => {
                for (i, (ino, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(ino, i as i64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let r = self.disk("fsyncdir", None, true).and_then(|mut d| {
            d.dir_fsyncs += 1;
            let n = d.dir_mut(ino)?;
            n.durable_entries = n.entries.clone();
            Ok(())
        });
        answer!(reply, r, |_v| reply.ok());
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: fuser::ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 23, 1 << 23, 1 << 20, 1 << 19, 4096, 255, 4096);
    }

    fn access(&mut self, _req: &Request<'_>, _ino: u64, _mask: i32, reply: ReplyEmpty) {
        reply.ok();
    }
}
