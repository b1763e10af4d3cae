//! Typed `bpf(2)` map-element commands on a map's own fd.
//!
//! The kernel cache is written from every worker thread, under the store's shard locks; aya's typed
//! maps need `&mut` for an update, so the writer keeps plain fds and issues the commands itself.

use std::marker::PhantomData;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};

use anyhow::{ensure, Result};
use aya::maps::MapData;
use aya::Pod;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_ANY: u64 = 0;

/// The `bpf_attr` layout of the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A map whose keys are `K` and values `V` (not per-CPU), checked when it is opened.
pub(super) struct MapFd<K, V> {
    fd: OwnedFd,
    _types: PhantomData<fn(&K) -> V>,
}

impl<K: Pod, V: Pod> MapFd<K, V> {
    /// Opens `map` for element commands after checking that its key and value sizes are exactly those of
    /// `K` and `V`: what lets [`update`](Self::update) and [`lookup`](Self::lookup) hand the kernel
    /// pointers to a `K` and a `V`.
    pub fn new(map: &MapData) -> Result<Self> {
        let info = map.info()?;
        let (k, v) = (std::mem::size_of::<K>(), std::mem::size_of::<V>());
        ensure!(
            info.key_size() as usize == k && info.value_size() as usize == v,
            "map {:?}: key/value sizes {}/{} where {k}/{v} were expected",
            info.name_as_str(),
            info.key_size(),
            info.value_size()
        );
        Ok(MapFd { fd: map.fd().as_fd().try_clone_to_owned()?, _types: PhantomData })
    }

    /// BPF_MAP_UPDATE_ELEM (BPF_ANY).
    pub fn update(&self, key: &K, value: &V) -> std::io::Result<()> {
        // SAFETY: the kernel reads key_size bytes at `key` and value_size bytes at `value`, which `new`
        // checked are the sizes of K and V; both references are live for the whole call.
        unsafe { self.elem_cmd(BPF_MAP_UPDATE_ELEM, key, (value as *const V).cast()) }
    }

    /// BPF_MAP_LOOKUP_ELEM: a copy of the element.
    pub fn lookup(&self, key: &K) -> std::io::Result<V> {
        let mut value = std::mem::MaybeUninit::<V>::uninit();
        // SAFETY: the kernel writes value_size (= size_of::<V>, checked by `new`) bytes to `value`, which
        // is live and writable for the call.
        unsafe { self.elem_cmd(BPF_MAP_LOOKUP_ELEM, key, value.as_mut_ptr().cast()) }?;
        // SAFETY: the lookup succeeded, so the kernel filled all of `value`; V is Pod (any bytes are valid).
        Ok(unsafe { value.assume_init() })
    }

    /// BPF_MAP_DELETE_ELEM (for a program array: empties the slot).
    pub fn delete(&self, key: &K) -> std::io::Result<()> {
        // SAFETY: the delete command reads only `key`; the value pointer is not used (null).
        unsafe { self.elem_cmd(BPF_MAP_DELETE_ELEM, key, std::ptr::null()) }
    }

    /// # Safety
    /// `value` must point at `size_of::<V>()` bytes, readable for an update and writable for a lookup, for
    /// the duration of the call.
    unsafe fn elem_cmd(&self, cmd: libc::c_long, key: &K, value: *const u8) -> std::io::Result<()> {
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const K as u64,
            value: value as u64,
            flags: BPF_ANY,
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for the element commands; the kernel reads `key` (a
        // live K, whose size `new` checked) and reads or writes `value` (the caller's contract).
        let r = unsafe {
            libc::syscall(libc::SYS_bpf, cmd, &attr as *const ElemAttr, std::mem::size_of::<ElemAttr>() as libc::c_uint)
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}
