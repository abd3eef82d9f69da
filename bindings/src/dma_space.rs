//! The process's DMA address space: which memory a device may reach, at which IOVA.
//!
//! Contract:
//! - IOVA equals the virtual address (SPDK's `iova-mode=va`). Linux keeps user addresses
//!   below 2^47, so this needs an IOMMU with a 48-bit input address width (VT-d's 4-level
//!   tables; QEMU's `intel-iommu,aw-bits=48`); a narrower IOMMU refuses the mapping, and the
//!   attach that asked for it fails with that error.
//! - Every [`crate::dma::DmaPool`] registers its whole region here when it is made and leaves
//!   when its last buffer and handle are gone. While it is registered, every live
//!   [`DmaMapper`] (one VFIO container) has it mapped; a mapper that arrives later maps every
//!   region already registered. So any buffer from any pool can be handed to any device.
//! - A region leaves every mapper before its memory is unmapped from the process, so a device
//!   never holds an IOMMU mapping of memory the process could reuse.
//!
//! This is process-wide state on purpose: an IOMMU domain is one per process here, as in
//! SPDK's `spdk_mem_map`. It is touched only when pools and containers come and go, never on
//! the I/O path.

use std::io;
use std::sync::{Arc, Mutex, Weak};

/// One IOMMU domain that device DMA goes through.
pub(crate) trait DmaMapper: Send + Sync {
    /// Makes `[addr, addr + len)` reachable at IOVA `addr`.
    fn map(&self, addr: usize, len: usize) -> io::Result<()>;
    /// Removes a mapping `map` made.
    fn unmap(&self, addr: usize, len: usize);
}

#[derive(Default)]
struct Space {
    regions: Vec<(usize, usize)>,
    mappers: Vec<Weak<dyn DmaMapper>>,
}

static SPACE: Mutex<Space> = Mutex::new(Space {
    regions: Vec::new(),
    mappers: Vec::new(),
});

fn space() -> std::sync::MutexGuard<'static, Space> {
    // A panic while holding the lock leaves the lists whole (each change is one push or
    // retain), so a poisoned lock is still usable.
    SPACE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a region and maps it into every live mapper; on failure nothing stays mapped.
pub(crate) fn register_region(addr: usize, len: usize) -> io::Result<()> {
    let mut s = space();
    let mappers: Vec<Arc<dyn DmaMapper>> = s.mappers.iter().filter_map(Weak::upgrade).collect();
    for (i, m) in mappers.iter().enumerate() {
        if let Err(e) = m.map(addr, len) {
            for done in &mappers[..i] {
                done.unmap(addr, len);
            }
            return Err(e);
        }
    }
    s.regions.push((addr, len));
    Ok(())
}

/// Unmaps a region from every live mapper and forgets it.
pub(crate) fn unregister_region(addr: usize, len: usize) {
    let mut s = space();
    s.regions.retain(|&r| r != (addr, len));
    s.mappers.retain(|w| w.strong_count() > 0);
    for m in s.mappers.iter().filter_map(Weak::upgrade) {
        m.unmap(addr, len);
    }
}

/// Adds a mapper and maps every registered region into it; on failure the mapper is not
/// added and what was mapped is unmapped again.
pub(crate) fn add_mapper(mapper: &Arc<dyn DmaMapper>) -> io::Result<()> {
    let mut s = space();
    let regions = s.regions.clone();
    for (i, &(addr, len)) in regions.iter().enumerate() {
        if let Err(e) = mapper.map(addr, len) {
            for &(a, l) in &regions[..i] {
                mapper.unmap(a, l);
            }
            return Err(e);
        }
    }
    s.mappers.retain(|w| w.strong_count() > 0);
    s.mappers.push(Arc::downgrade(mapper));
    Ok(())
}

/// How many regions are registered (for tests and status).
pub fn registered_regions() -> usize {
    space().regions.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::DmaPool;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A mapper that records what it holds, and refuses regions of one length (a length no
    /// other test's pools have: tests in this binary run at once).
    #[derive(Default)]
    struct Recorder {
        held: Mutex<Vec<(usize, usize)>>,
        refuse_len: AtomicUsize,
    }

    const ODD_LEN: usize = 7 * 4096;

    impl DmaMapper for Recorder {
        fn map(&self, addr: usize, len: usize) -> io::Result<()> {
            let mut held = self.held.lock().unwrap();
            if len == self.refuse_len.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            held.push((addr, len));
            Ok(())
        }
        fn unmap(&self, addr: usize, len: usize) {
            self.held.lock().unwrap().retain(|&r| r != (addr, len));
        }
    }

    // One test, so no other test in this binary adds mappers while it counts.
    #[test]
    fn pools_are_mapped_into_every_mapper_while_they_live() {
        let early = DmaPool::new(8192, 2).unwrap();
        let rec = Arc::new(Recorder::default());
        let mapper: Arc<dyn DmaMapper> = rec.clone();
        add_mapper(&mapper).unwrap();
        let (early_addr, _) = early.take().map(|b| b.pool_region()).unwrap();
        assert!(rec
            .held
            .lock()
            .unwrap()
            .iter()
            .any(|&(a, l)| a == early_addr as usize && l == 8192 * 2));

        let late = DmaPool::new(4096, 1).unwrap();
        let buf = late.take().unwrap();
        assert_eq!(buf.iova(), buf.ptr() as u64, "iova is the virtual address");
        assert!(rec
            .held
            .lock()
            .unwrap()
            .contains(&(buf.ptr() as usize, 4096)));
        let addr = buf.ptr() as usize;
        drop(buf);
        drop(late);
        assert!(
            !rec.held.lock().unwrap().iter().any(|&(a, _)| a == addr),
            "a dropped pool leaves the mapper"
        );

        // A mapper that cannot map a new pool makes the pool fail, and holds nothing of it.
        rec.refuse_len.store(ODD_LEN, Ordering::Relaxed);
        assert!(DmaPool::new(ODD_LEN, 1).is_err());
        drop(mapper);
        drop(rec);
        assert!(
            DmaPool::new(ODD_LEN, 1).is_ok(),
            "a dropped mapper is forgotten"
        );
    }
}
