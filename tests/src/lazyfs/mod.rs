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
use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, MountOption};
use libc::{EEXIST, EINVAL, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY};

mod serve;

use serve::Serve;

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

type Res<T> = Result<T, i32>;

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
