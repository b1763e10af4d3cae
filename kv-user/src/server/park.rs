//! Parking idle TCP connections (C10K): a connection with nothing to do for [`PARK_AFTER`] gives up its
//! task and its registration with the runtime and waits as a bare descriptor in its worker's parking
//! epoll set, costing no user-space memory but an entry in that set. When it becomes readable (or
//! closes), the worker serves it with a new task. Busy connections never park, so the requests of an
//! active client pay nothing for this.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long a connection waits for input in its task before it parks.
pub const PARK_AFTER: Duration = Duration::from_secs(2);

/// Connections parked since [`release_parked_memory`] last ran.
static PARKED_SINCE_TRIM: AtomicUsize = AtomicUsize::new(0);
/// Parkings after which freed task memory is worth handing back.
const TRIM_AFTER: usize = 256;

/// Hands the memory of the tasks that parked connections left back to the system, once enough of them
/// did: their tasks are freed into glibc's per-thread arenas, interleaved with live allocations, where
/// nothing returns it by itself. `malloc_trim` walks the arenas (a few ms), so it runs from a
/// housekeeping thread about once a second, and only after a wave of parking.
pub fn release_parked_memory() {
    if PARKED_SINCE_TRIM.load(Relaxed) >= TRIM_AFTER {
        PARKED_SINCE_TRIM.store(0, Relaxed);
        // SAFETY: malloc_trim only returns free heap pages to the kernel; it is thread-safe.
        unsafe { libc::malloc_trim(0) };
    }
}

thread_local! {
    /// The parking set of the worker running on this thread (see [`Parking::install`]).
    static PARKING: RefCell<Option<std::rc::Rc<Parking>>> = const { RefCell::new(None) };
}

pub struct Parking {
    ep: AsyncFd<OwnedFd>,
    /// The parked sockets, owned here: closed if the worker goes away first.
    parked: RefCell<HashSet<RawFd>>,
}

impl Parking {
    /// A parking set for the calling worker thread (inside its runtime), installed for [`park`].
    pub fn install() -> io::Result<std::rc::Rc<Parking>> {
        // SAFETY: epoll_create1 has no memory-safety preconditions; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its descriptor open and the same for as long as the AsyncFd owns it.
        let ep = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }.map_err(io::Error::from)?;
        let p = std::rc::Rc::new(Parking { ep, parked: RefCell::new(HashSet::new()) });
        PARKING.with(|slot| *slot.borrow_mut() = Some(p.clone()));
        Ok(p)
    }

    fn add(&self, s: std::net::TcpStream) -> io::Result<()> {
        let fd = s.as_raw_fd();
        let events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT;
        let mut ev = libc::epoll_event { events: events as u32, u64: fd as u64 };
        // SAFETY: both descriptors are open (the socket is owned by `s` until into_raw_fd below) and ev
        // is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.ep.get_ref().as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.parked.borrow_mut().insert(s.into_raw_fd());
        PARKED_SINCE_TRIM.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Waits until parked connections become readable or close, and moves them into `out`.
    pub async fn woken(&self, out: &mut Vec<std::net::TcpStream>) -> io::Result<()> {
        loop {
            let mut ready = self.ep.readable().await?;
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 64];
            let ep = self.ep.get_ref().as_fd().as_raw_fd();
            // SAFETY: evs has room for the 64 events asked for; timeout 0 never blocks.
            let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as i32, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                ready.clear_ready();
                continue;
            }
            for ev in &evs[..n as usize] {
                let fd = ev.u64 as RawFd;
                if self.parked.borrow_mut().remove(&fd) {
                    // SAFETY: fd is a parked socket, owned by this set until here; EPOLL_CTL_DEL with a
                    // null event is valid since Linux 2.6.9.
                    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
                    // SAFETY: ownership of fd moves from the set to the stream.
                    out.push(unsafe { std::net::TcpStream::from_raw_fd(fd) });
                }
            }
            return Ok(());
        }
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        for fd in self.parked.get_mut().drain() {
            // SAFETY: the set owns each parked descriptor and closes it once, here.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// Parks `s` in this worker's set; the socket is closed (an error returned) if there is none or the
/// kernel refuses it.
pub fn park(s: std::net::TcpStream) -> io::Result<()> {
    PARKING.with(|slot| match &*slot.borrow() {
        Some(p) => p.add(s),
        None => Err(io::Error::other("no parking set on this thread")),
    })
}
