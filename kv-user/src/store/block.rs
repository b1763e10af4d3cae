//! A block of item memory: the unit the store takes from the system and charges against `-m`.
//!
//! Big blocks are anonymous private mappings, so dropping one gives its pages straight back to the
//! kernel (glibc's `free` keeps freed heap memory and raises its mmap threshold, so RSS would drift
//! above what the store accounts). Small blocks (tiny `-m` values, tests) come from the heap.

use std::ptr::NonNull;

/// Blocks at least this large are mapped; smaller ones are heap allocations.
const MAP_MIN: usize = 64 << 10;

pub(crate) struct Block {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
}

// SAFETY: a Block exclusively owns its memory (like a Box<[u8]>); nothing else aliases it.
unsafe impl Send for Block {}
// SAFETY: shared access only hands out `&[u8]`, which is Sync.
unsafe impl Sync for Block {}

impl Block {
    /// A zero-filled block of `len` bytes (mapped blocks round up to whole pages).
    pub fn new(len: usize) -> Block {
        assert!(len > 0);
        if len >= MAP_MIN {
            let page = page_size();
            let len = len.div_ceil(page) * page;
            // SAFETY: an anonymous private mapping with no address hint touches no existing memory; the
            // result is checked before use.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                std::alloc::handle_alloc_error(std::alloc::Layout::from_size_align(len, page).expect("page layout"));
            }
            Block { ptr: NonNull::new(p.cast()).expect("mmap returned null"), len, mapped: true }
        } else {
            let b: Box<[u8]> = vec![0u8; len].into_boxed_slice();
            let ptr = NonNull::new(Box::into_raw(b).cast::<u8>()).expect("box is non-null");
            Block { ptr, len, mapped: false }
        }
    }

    /// Bytes this block holds (what it is charged).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised bytes owned by this block for its whole life.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: ptr/len are exactly the mapping created in `new`, unmapped once, here.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        } else {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: ptr/len came from `Box::into_raw` of a boxed slice of this length in `new`.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_zeroed_writable_and_sized() {
        for len in [1, 100, MAP_MIN - 1, MAP_MIN, MAP_MIN + 1, 1 << 20] {
            let mut b = Block::new(len);
            assert!(b.len() >= len);
            assert!(b.bytes().iter().all(|&x| x == 0));
            b.bytes_mut()[len - 1] = 7;
            assert_eq!(b.bytes()[len - 1], 7);
        }
    }
}
