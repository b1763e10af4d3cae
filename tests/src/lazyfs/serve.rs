//! The FUSE requests, answered from the [`Disk`]: the visible state, with a crash armed by
//! [`super::LazyFs::arm`] fired from here.

use std::ffi::{OsStr, OsString};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use fuser::{
    FileType, Filesystem, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow,
};
use libc::{EEXIST, EIO, EISDIR, ENOTDIR, ENOTEMPTY};

use super::{attr, crash, Disk, Res, ROOT, TTL};

/// The FUSE side: one per mount, sharing the disk.
pub(super) struct Serve(pub(super) Arc<(Mutex<Disk>, Condvar)>);

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
