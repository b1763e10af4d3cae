//! The table of open sockets behind `stats conns`: the listening socket, the UDP socket and every TCP
//! connection, by descriptor, as memcached's `conns[]` array lists them. The network layer registers
//! and updates entries; `exec` only reads them.
//!
//! A connection touches only its own entry per request (two relaxed stores); the table's locks are
//! taken when a connection opens or closes and when `stats conns` runs. Parked connections keep their
//! entry, since their descriptor stays open.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::clock::Clock as _;

/// What a socket is doing, in memcached's state names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// The TCP listener.
    Listening = 0,
    /// Waiting for a command (and the UDP socket, always).
    Read = 1,
    /// Running the commands it has read.
    ParseCmd = 2,
    /// Waiting for the rest of a value being uploaded.
    Nread = 3,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Listening => "conn_listening",
            State::Read => "conn_read",
            State::ParseCmd => "conn_parse_cmd",
            State::Nread => "conn_nread",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Listening,
            2 => State::ParseCmd,
            3 => State::Nread,
            _ => State::Read,
        }
    }
}

/// The transport of an entry, shown as the address's prefix (`tcp:`, `udp:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// One socket.
#[derive(Debug)]
pub struct Entry {
    pub transport: Transport,
    /// The peer of a connection; the local address of a listening or UDP socket.
    pub addr: SocketAddr,
    /// The local address a connection was accepted on (None for listening and UDP sockets).
    pub listen_addr: Option<SocketAddr>,
    last_cmd: AtomicU64,
    state: AtomicU8,
}

impl Entry {
    fn new(transport: Transport, addr: SocketAddr, listen_addr: Option<SocketAddr>, state: State) -> Entry {
        Entry { transport, addr, listen_addr, last_cmd: AtomicU64::new(now()), state: AtomicU8::new(state as u8) }
    }

    /// A command arrived: it is being run.
    pub fn command(&self) {
        self.last_cmd.store(now(), Relaxed);
        self.state.store(State::ParseCmd as u8, Relaxed);
    }

    /// A command arrived on a socket that stays in its state (UDP). Shared by the UDP threads, so the
    /// line is written only when the second changes.
    pub fn touch(&self) {
        let now = now();
        if self.last_cmd.load(Relaxed) != now {
            self.last_cmd.store(now, Relaxed);
        }
    }

    /// The commands read so far are answered; `uploading` if a value is still being received.
    pub fn wait(&self, uploading: bool) {
        self.state.store(if uploading { State::Nread } else { State::Read } as u8, Relaxed);
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    /// Seconds since the last command (or since the socket was opened).
    pub fn secs_since_last_cmd(&self) -> u64 {
        now().saturating_sub(self.last_cmd.load(Relaxed))
    }
}

/// The store's one-second clock (CLOCK_REALTIME_COARSE): cheap enough to read per request.
fn now() -> u64 {
    crate::clock::SystemClock.now()
}

const SHARDS: usize = 16;

/// The table, sharded by descriptor so that connections opening and closing on different workers
/// rarely wait for each other.
#[derive(Default)]
pub struct Registry {
    shards: [Mutex<HashMap<RawFd, Arc<Entry>>>; SHARDS],
}

impl Registry {
    fn shard(&self, fd: RawFd) -> std::sync::MutexGuard<'_, HashMap<RawFd, Arc<Entry>>> {
        // A poisoned shard still holds a consistent map: every update is a single insert or remove.
        self.shards[fd as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, fd: RawFd, e: Entry) -> Arc<Entry> {
        let e = Arc::new(e);
        // Replaces the entry of a closed socket whose descriptor was reused, if its owner has not
        // removed it yet (its `remove` then leaves this one alone).
        self.shard(fd).insert(fd, e.clone());
        e
    }

    /// Registers the TCP listener.
    pub fn listener(&self, fd: RawFd, addr: SocketAddr) -> Arc<Entry> {
        self.add(fd, Entry::new(Transport::Tcp, addr, None, State::Listening))
    }

    /// Registers the UDP socket.
    pub fn udp(&self, fd: RawFd, addr: SocketAddr) -> Arc<Entry> {
        self.add(fd, Entry::new(Transport::Udp, addr, None, State::Read))
    }

    /// Registers an accepted connection from `peer` on `local`.
    pub fn connection(&self, fd: RawFd, peer: SocketAddr, local: SocketAddr) -> Arc<Entry> {
        self.add(fd, Entry::new(Transport::Tcp, peer, Some(local), State::Read))
    }

    /// The entry of an open descriptor.
    pub fn get(&self, fd: RawFd) -> Option<Arc<Entry>> {
        self.shard(fd).get(&fd).cloned()
    }

    /// Removes `e`, registered for `fd`, unless a later socket has taken the descriptor over.
    pub fn remove(&self, fd: RawFd, e: &Arc<Entry>) {
        let mut shard = self.shard(fd);
        if shard.get(&fd).is_some_and(|cur| Arc::ptr_eq(cur, e)) {
            shard.remove(&fd);
        }
    }

    /// Every entry, by descriptor.
    pub fn snapshot(&self) -> Vec<(RawFd, Arc<Entry>)> {
        let mut all: Vec<_> = (0..SHARDS)
            .flat_map(|i| self.shard(i as RawFd).iter().map(|(fd, e)| (*fd, e.clone())).collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|(fd, _)| *fd);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_reused_descriptor_keeps_its_new_entry() {
        let r = Registry::default();
        let old = r.connection(7, addr("127.0.0.1:1000"), addr("127.0.0.1:11211"));
        // The old connection closed and the descriptor was accepted again before the old task removed it.
        let new = r.connection(7, addr("127.0.0.1:2000"), addr("127.0.0.1:11211"));
        r.remove(7, &old);
        assert_eq!(r.get(7).unwrap().addr, addr("127.0.0.1:2000"));
        r.remove(7, &new);
        assert!(r.get(7).is_none());
    }

    #[test]
    fn entries_are_listed_by_descriptor_with_their_state() {
        let r = Registry::default();
        r.connection(40, addr("[::1]:5"), addr("[::1]:11211"));
        r.listener(3, addr("0.0.0.0:11211"));
        let u = r.udp(17, addr("0.0.0.0:11211"));
        let fds: Vec<_> = r.snapshot().iter().map(|(fd, _)| *fd).collect();
        assert_eq!(fds, [3, 17, 40]);
        assert_eq!(r.get(3).unwrap().state(), State::Listening);
        u.command();
        assert_eq!(u.state(), State::ParseCmd);
        u.wait(true);
        assert_eq!(u.state(), State::Nread);
        u.wait(false);
        assert_eq!(u.state(), State::Read);
        assert!(u.secs_since_last_cmd() <= 1);
    }
}
