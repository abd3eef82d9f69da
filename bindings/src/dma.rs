//! Pools of page-aligned DMA-capable buffers.
//!
//! A [`DmaPool`] maps one anonymous region and cuts it into `count` buffers of `buf_size`
//! bytes each (rounded up to a page, so every buffer is 4 KiB aligned, as O_DIRECT and NVMe
//! PRPs want). A [`DmaBuf`] is an owned value: it is moved into a submission, handed back with
//! the completion, and returns to its pool when dropped, from any thread.
//!
//! Exclusivity contract: an index sits either in the pool's free queue or in exactly one
//! `DmaBuf`, never both, so a `DmaBuf` is the only path to its bytes.
//!
//! Device reach: every pool's region is registered in [`crate::dma_space`] for as long as the
//! pool lives, so every VFIO container maps it, and [`DmaBuf::iova`] is the address a device
//! uses (the virtual address: `iova-mode=va`). A pool of 2 MiB or more sits on reserved huge
//! pages where the host has them (fewer IOMMU and TLB entries), on normal pages otherwise.

use crossbeam_queue::ArrayQueue;
use memmap2::MmapMut;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Page size that every buffer is aligned to.
pub const DMA_ALIGN: usize = 4096;

/// Process-wide pool ids, so a queue can tell pools apart when it registers them; only
/// uniqueness matters, so relaxed ordering is enough.
static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) struct PoolShared {
    id: u64,
    base: *mut u8,
    buf_size: usize,
    count: usize,
    free: ArrayQueue<u32>,
    /// Keeps the mapping alive for as long as any buffer or queue holds the pool.
    _map: MmapMut,
}

impl Drop for PoolShared {
    fn drop(&mut self) {
        // Runs before `_map` is unmapped: no device keeps a mapping of freed memory.
        crate::dma_space::unregister_region(self.base as usize, self.buf_size * self.count);
    }
}

const HUGE_2M: usize = 2 << 20;

/// An anonymous region of `len` bytes: on 2 MiB huge pages when `len` is a multiple of 2 MiB
/// and the host has some reserved, on normal pages otherwise.
fn map_region(len: usize) -> io::Result<MmapMut> {
    if len.is_multiple_of(HUGE_2M) {
        if let Ok(map) = memmap2::MmapOptions::new()
            .len(len)
            .huge(Some(21))
            .map_anon()
        {
            return Ok(map);
        }
    }
    MmapMut::map_anon(len)
}

// SAFETY: `base` points into `_map`, which lives as long as this struct. The bytes behind it
// are reached only through a `DmaBuf`, and each index is owned by at most one `DmaBuf` at a
// time (see the module contract), so sharing the pool between threads never shares bytes.
unsafe impl Send for PoolShared {}
// SAFETY: as above; the only shared mutable state is `free`, a lock-free queue.
unsafe impl Sync for PoolShared {}

/// A fixed set of equal, page-aligned buffers.
#[derive(Clone)]
pub struct DmaPool {
    shared: Arc<PoolShared>,
}

impl DmaPool {
    /// Maps `count` buffers of at least `buf_size` bytes each.
    pub fn new(buf_size: usize, count: usize) -> io::Result<DmaPool> {
        if buf_size == 0 || count == 0 || count > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a DMA pool needs a non-zero buffer size and count",
            ));
        }
        let buf_size = buf_size.div_ceil(DMA_ALIGN) * DMA_ALIGN;
        let len = buf_size.checked_mul(count).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "DMA pool size overflows")
        })?;
        let mut map = map_region(len)?;
        let base = map.as_mut_ptr();
        // Unregistered in `PoolShared::drop`, before the mapping goes.
        crate::dma_space::register_region(base as usize, len)?;
        let free = ArrayQueue::new(count);
        for index in 0..count as u32 {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(index);
        }
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        Ok(DmaPool {
            shared: Arc::new(PoolShared {
                id,
                base,
                buf_size,
                count,
                free,
                _map: map,
            }),
        })
    }

    /// Takes a free buffer, or `None` when all are in use.
    pub fn take(&self) -> Option<DmaBuf> {
        let index = self.shared.free.pop()?;
        Some(DmaBuf {
            shared: Arc::clone(&self.shared),
            index,
            len: self.shared.buf_size as u32,
        })
    }

    /// Capacity of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.shared.buf_size
    }

    /// Number of buffers the pool was made with.
    pub fn count(&self) -> usize {
        self.shared.count
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.shared.free.len()
    }
}

/// One buffer of a [`DmaPool`]; returns itself to the pool on drop.
pub struct DmaBuf {
    shared: Arc<PoolShared>,
    index: u32,
    len: u32,
}

impl DmaBuf {
    /// Bytes in use (what an I/O reads or writes); at most [`DmaBuf::capacity`].
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the buffer can hold.
    pub fn capacity(&self) -> usize {
        self.shared.buf_size
    }

    /// Sets the length in use. Panics above the capacity: a caller's bug, not a runtime error.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity(), "DmaBuf length {len} above capacity");
        self.len = len as u32;
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the range [index*buf_size, index*buf_size+len) lies inside the mapping
        // (index < count, len <= buf_size), the mapping outlives `self` through the Arc, and
        // this DmaBuf is the only owner of the index, so no one else writes these bytes.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len()) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only live view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), self.len()) }
    }

    /// Start of the buffer, for handing to a device.
    pub fn ptr(&self) -> *mut u8 {
        // SAFETY: index < count, so the offset stays inside the mapping.
        unsafe {
            self.shared
                .base
                .add(self.index as usize * self.shared.buf_size)
        }
    }

    /// The address a device reaches the buffer's first byte at, through any VFIO container
    /// (see [`crate::dma_space`]).
    pub fn iova(&self) -> u64 {
        self.ptr() as u64
    }

    /// Id of the pool this buffer belongs to, unique in the process.
    pub fn pool_id(&self) -> u64 {
        self.shared.id
    }

    /// The whole region of the owning pool as (address, length), for buffer registration.
    pub(crate) fn pool_region(&self) -> (*mut u8, usize) {
        (self.shared.base, self.shared.buf_size * self.shared.count)
    }

    /// A weak handle on the pool, to notice when the pool is gone.
    pub(crate) fn pool_weak(&self) -> std::sync::Weak<PoolShared> {
        Arc::downgrade(&self.shared)
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        // Cannot fail: the queue has room for every index and this one is not in it.
        let _ = self.shared.free.push(self.index);
    }
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("pool", &self.shared.id)
            .field("index", &self.index)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_exclusive_and_recycled() {
        let pool = DmaPool::new(1000, 3).unwrap();
        assert_eq!(pool.buf_size(), 4096);
        let mut a = pool.take().unwrap();
        let b = pool.take().unwrap();
        let c = pool.take().unwrap();
        assert!(pool.take().is_none());
        assert_eq!(a.ptr() as usize % DMA_ALIGN, 0);
        assert_ne!(a.ptr(), b.ptr());
        a.as_mut_slice().fill(0xab);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        drop(c);
        assert_eq!(pool.available(), 1);
        let c2 = pool.take().unwrap();
        assert_eq!(c2.len(), 4096);
        // A buffer dropped on another thread still comes home.
        std::thread::spawn(move || drop(c2)).join().unwrap();
        assert_eq!(pool.available(), 1);
    }

    #[test]
    fn zero_sized_pool_is_refused() {
        assert!(DmaPool::new(0, 1).is_err());
        assert!(DmaPool::new(4096, 0).is_err());
    }
}
