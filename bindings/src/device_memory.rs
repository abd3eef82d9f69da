//! A RAM region shared by every reactor: the medium behind the `malloc` bdev.
//!
//! Contract: like a real disk, the region does not order concurrent accesses to the same
//! bytes. The engine's routing gives each shard one owner reactor, and a client that issues
//! overlapping writes at once gets an unspecified mix of them, as from any block device.
//! Each copy is done with `copy_nonoverlapping` on raw device memory, never through Rust
//! references that live across calls, the same model as memory a DMA engine writes.

use memmap2::{MmapMut, MmapOptions, MmapRaw};
use std::io;

pub struct DeviceMemory {
    map: MmapRaw,
    huge_pages: bool,
}

impl DeviceMemory {
    /// Maps `len` bytes of zeroed anonymous memory, on 2 MiB huge pages when the host has
    /// some reserved, otherwise on normal pages with transparent huge pages advised. The
    /// pages are populated up front, as SPDK's pinned memory is: a RAM disk that cannot get
    /// its memory fails at creation, not at some later write, and its first pass runs at the
    /// speed of later ones.
    pub fn new(len: usize) -> io::Result<DeviceMemory> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device memory needs a non-zero length",
            ));
        }
        const HUGE_2M: usize = 2 << 20;
        if len.is_multiple_of(HUGE_2M) {
            if let Ok(map) = MmapOptions::new()
                .len(len)
                .huge(Some(21))
                .populate()
                .map_anon()
            {
                return Ok(DeviceMemory {
                    map: MmapRaw::from(map),
                    huge_pages: true,
                });
            }
        }
        let map: MmapMut = MmapOptions::new().len(len).map_anon()?;
        // Advice only; a kernel without THP refuses it and the region still works. It must
        // come before the pages are populated, or they are faulted in as 4 KiB pages.
        let _ = map.advise(memmap2::Advice::HugePage);
        if map.advise(memmap2::Advice::PopulateWrite).is_err() {
            // Kernels before 5.14: fault every page in by hand.
            let raw = MmapRaw::from(map);
            let mem = DeviceMemory {
                map: raw,
                huge_pages: false,
            };
            for page in (0..len).step_by(4096) {
                mem.zero(page, 1);
            }
            return Ok(mem);
        }
        Ok(DeviceMemory {
            map: MmapRaw::from(map),
            huge_pages: false,
        })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Whether the region sits on reserved huge pages.
    pub fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "device memory access {offset}+{len} beyond {}",
            self.len()
        );
    }

    /// Copies `dst.len()` bytes at `offset` out of the region.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: the range was checked to lie inside the live mapping; `dst` is a distinct
        // Rust buffer, so the two do not overlap. Concurrent writers are covered by the module
        // contract (device-memory semantics, no Rust reference into the region is held).
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Copies `src` into the region at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: as in `read`, with the roles of the two ranges swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                src.len(),
            )
        }
    }

    /// Sets `len` bytes at `offset` to zero.
    pub fn zero(&self, offset: usize, len: usize) {
        self.check(offset, len);
        // SAFETY: the range was checked to lie inside the live mapping.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(offset), 0, len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written() {
        let mem = DeviceMemory::new(1 << 20).unwrap();
        mem.write(4096, &[7u8; 512]);
        let mut out = [0u8; 1024];
        mem.read(4096 - 512, &mut out);
        assert!(out[..512].iter().all(|&b| b == 0));
        assert!(out[512..].iter().all(|&b| b == 7));
        mem.zero(4096, 256);
        mem.read(4096, &mut out[..512]);
        assert!(out[..256].iter().all(|&b| b == 0));
        assert!(out[256..512].iter().all(|&b| b == 7));
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_range_access_panics() {
        let mem = DeviceMemory::new(4096).unwrap();
        mem.write(4000, &[0u8; 200]);
    }
}
