//! A RAM region shared by every reactor: the medium behind the `malloc` bdev.
//!
//! Contract: like a real disk, the region does not order concurrent accesses to the same
//! bytes: two reactors may read and write overlapping ranges at once (a client's overlapping
//! writes from two connections), and get an unspecified mix of them, word by word, as from
//! any block device. That must not be undefined behaviour, since `read`, `write` and `zero`
//! are safe functions taking `&self` on a shared value: so every access to the region is an
//! aligned 8-byte *atomic* load or store (relaxed: the region promises no ordering, only
//! freedom from data races). A plain `memcpy` here, racing with another thread's on the same
//! bytes, is a data race, undefined behaviour however "device-like" it looks. Accesses are in
//! whole words only (offset and length multiples of [`WORD`]; every block size is), so the
//! region is never touched by atomics of two sizes. No Rust reference into the region is ever
//! made other than the `AtomicU64`s of one access, and the mapping lives as long as `self`.
use memmap2::{MmapMut, MmapOptions, MmapRaw};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// The unit of every access: offsets and lengths are multiples of it.
pub const WORD: usize = 8;

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
        if len == 0 || !len.is_multiple_of(WORD) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "device memory needs a non-zero length in whole 8-byte words",
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
                mem.zero(page, WORD);
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
        assert!(
            offset.is_multiple_of(WORD) && len.is_multiple_of(WORD),
            "device memory access {offset}+{len} is not in whole {WORD}-byte words"
        );
    }

    /// The word at byte `offset` of the region (checked by the caller).
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(WORD) && offset + WORD <= self.len());
        // SAFETY: `offset` lies inside the live mapping (checked by the caller) and the
        // mapping is page-aligned, so the pointer is 8-byte aligned, valid for reads and
        // writes, and stays so while `self` (and so the returned reference) lives. Every
        // access to the region goes through such an AtomicU64 (see the module contract): no
        // non-atomic or differently sized access can race with it.
        unsafe { AtomicU64::from_ptr(self.map.as_mut_ptr().add(offset).cast::<u64>()) }
    }

    /// Copies `dst.len()` bytes at `offset` out of the region.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        for (i, out) in dst.chunks_exact_mut(WORD).enumerate() {
            let v = self.word(offset + i * WORD).load(Ordering::Relaxed);
            out.copy_from_slice(&v.to_ne_bytes());
        }
    }

    /// Copies `src` into the region at `offset`.
    pub fn write(&self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        for (i, word) in src.chunks_exact(WORD).enumerate() {
            let v = u64::from_ne_bytes(word.try_into().expect("chunks_exact gives whole words"));
            self.word(offset + i * WORD).store(v, Ordering::Relaxed);
        }
    }

    /// Sets `len` bytes at `offset` to zero.
    pub fn zero(&self, offset: usize, len: usize) {
        self.check(offset, len);
        for at in (offset..offset + len).step_by(WORD) {
            self.word(at).store(0, Ordering::Relaxed);
        }
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
    #[should_panic(expected = "whole 8-byte words")]
    fn an_access_not_in_whole_words_panics() {
        let mem = DeviceMemory::new(4096).unwrap();
        mem.write(4, &[0u8; 8]);
    }

    /// Overlapping writers and a reader on three threads at once: defined behaviour (every
    /// access is atomic), and every word read is one some writer wrote whole.
    #[test]
    fn racing_overlapping_accesses_see_whole_words() {
        let mem = std::sync::Arc::new(DeviceMemory::new(1 << 16).unwrap());
        let writers: Vec<_> = [0x11u8, 0x22]
            .into_iter()
            .map(|b| {
                let mem = std::sync::Arc::clone(&mem);
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        mem.write(0, &[b; 1 << 16]);
                    }
                })
            })
            .collect();
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..200 {
            mem.read(0, &mut out);
            for w in out.chunks_exact(WORD) {
                assert!(w.iter().all(|&x| x == w[0]), "a torn word: {w:?}");
            }
        }
        for w in writers {
            w.join().unwrap();
        }
    }

    #[test]
    #[should_panic(expected = "beyond")]
    fn out_of_range_access_panics() {
        let mem = DeviceMemory::new(4096).unwrap();
        mem.write(4000, &[0u8; 200]);
    }
}
