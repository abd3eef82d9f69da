//! The bdevs of one engine, by name and by id.
//!
//! Ids are never reused, so a reactor's channel table (indexed by id) can never reach a newer
//! bdev through a stale id. A bdev stacked on others (error, delay) claims them when it is
//! registered and releases them when it is removed; a claimed bdev cannot be removed, and a
//! claim is exclusive, as in SPDK. Only the control path takes the lock.

use super::{BackingId, BdevError, BdevRef};
use std::collections::HashMap;
use std::sync::RwLock;

/// Longest bdev name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Index of a bdev in its registry.
pub type BdevId = u32;

struct Entry {
    bdev: BdevRef,
    claimed_by: Option<String>,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<Entry>>,
    names: HashMap<String, BdevId>,
}

impl Inner {
    /// The live entry named `name`.
    fn entry_mut(&mut self, name: &str) -> Result<(BdevId, &mut Entry), BdevError> {
        let id = *self
            .names
            .get(name)
            .ok_or_else(|| BdevError::NotFound(name.to_string()))?;
        let entry = self.slots[id as usize]
            .as_mut()
            .expect("a named slot is live");
        Ok((id, entry))
    }

    /// Refuses a second bdev on a file or device a bdev here already has open (`path` as
    /// the new one names it): the two would write over each other's blocks.
    fn check_backing_free(&self, path: &str, id: BackingId) -> Result<(), BdevError> {
        let twin = self
            .slots
            .iter()
            .flatten()
            .find(|e| e.bdev.backing().is_some_and(|b| b.id == id));
        match twin {
            Some(twin) => Err(BdevError::invalid(
                "filename",
                format!(
                    "'{path}' is already open as bdev '{}' ('{}'); two bdevs on one file or \
                     device would write over each other's blocks",
                    twin.bdev.info().name,
                    twin.bdev.backing().map_or("", |b| b.path.as_str())
                ),
            )),
            None => Ok(()),
        }
    }
}

/// One row of [`BdevRegistry::list`].
pub struct Listed {
    pub id: BdevId,
    pub bdev: BdevRef,
    pub claimed_by: Option<String>,
}

#[derive(Default)]
pub struct BdevRegistry {
    inner: RwLock<Inner>,
}

impl BdevRegistry {
    pub fn new() -> BdevRegistry {
        BdevRegistry::default()
    }

    /// [`Inner::check_backing_free`] for a file about to be opened as a bdev: run before the
    /// open, so that the bdev that has it here is named (rather than the file's lock, taken
    /// at the open, refusing without saying by whom).
    pub fn check_path_free(&self, path: &str) -> Result<(), BdevError> {
        match std::fs::metadata(path) {
            Ok(meta) => self.read().check_backing_free(path, BackingId::of(&meta)),
            // The open reports what is wrong with the path.
            Err(_) => Ok(()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a bdev and claims the bdevs it is stacked on; all or nothing. Names and uuids
    /// are unique (a uuid names a bdev as well as its name does, as in SPDK).
    pub fn register(&self, bdev: BdevRef) -> Result<BdevId, BdevError> {
        let mut inner = self.write();
        let name = bdev.info().name.clone();
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(BdevError::invalid(
                "name",
                format!("must be 1 to {MAX_NAME_BYTES} bytes of printable characters"),
            ));
        }
        if inner.names.contains_key(&name) {
            return Err(BdevError::Exists(name));
        }
        let uuid = &bdev.info().uuid;
        if let Some(twin) = inner
            .slots
            .iter()
            .flatten()
            .find(|e| e.bdev.info().uuid.eq_ignore_ascii_case(uuid))
        {
            return Err(BdevError::UuidExists {
                uuid: uuid.clone(),
                name: twin.bdev.info().name.clone(),
            });
        }
        if let Some(backing) = bdev.backing() {
            inner.check_backing_free(&backing.path, backing.id)?;
        }
        let bases = bdev.base_bdevs();
        for base in &bases {
            let entry = inner
                .names
                .get(base)
                .and_then(|&id| inner.slots[id as usize].as_ref())
                .ok_or_else(|| BdevError::NotFound(base.clone()))?;
            if let Some(user) = &entry.claimed_by {
                return Err(BdevError::InUse {
                    name: base.clone(),
                    user: user.clone(),
                });
            }
        }
        for base in &bases {
            let id = inner.names[base];
            if let Some(entry) = inner.slots[id as usize].as_mut() {
                entry.claimed_by = Some(format!("bdev '{name}'"));
            }
        }
        let id = inner.slots.len() as BdevId;
        inner.slots.push(Some(Entry {
            bdev,
            claimed_by: None,
        }));
        inner.names.insert(name, id);
        Ok(id)
    }

    /// Removes an unclaimed bdev and releases its claims on the bdevs below it.
    pub fn unregister(&self, name: &str) -> Result<BdevRef, BdevError> {
        let mut inner = self.write();
        let (id, entry) = inner.entry_mut(name)?;
        if let Some(user) = &entry.claimed_by {
            return Err(BdevError::InUse {
                name: name.to_string(),
                user: user.clone(),
            });
        }
        let entry = inner.slots[id as usize].take().expect("named slot is live");
        inner.names.remove(name);
        for base in entry.bdev.base_bdevs() {
            if let Some(&bid) = inner.names.get(&base) {
                if let Some(e) = inner.slots[bid as usize].as_mut() {
                    e.claimed_by = None;
                }
            }
        }
        Ok(entry.bdev)
    }

    /// Claims a bdev for `user` (a pool, an export); fails if someone else holds it.
    pub fn claim(&self, name: &str, user: &str) -> Result<(), BdevError> {
        let mut inner = self.write();
        let (_, entry) = inner.entry_mut(name)?;
        match &entry.claimed_by {
            Some(holder) if holder != user => Err(BdevError::InUse {
                name: name.to_string(),
                user: holder.clone(),
            }),
            _ => {
                entry.claimed_by = Some(user.to_string());
                Ok(())
            }
        }
    }

    /// Releases a claim held by `user`.
    pub fn release(&self, name: &str, user: &str) {
        let mut inner = self.write();
        if let Some(&id) = inner.names.get(name) {
            if let Some(entry) = inner.slots[id as usize].as_mut() {
                if entry.claimed_by.as_deref() == Some(user) {
                    entry.claimed_by = None;
                }
            }
        }
    }

    pub fn get(&self, id: BdevId) -> Option<BdevRef> {
        self.read()
            .slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .map(|e| e.bdev.clone())
    }

    pub fn lookup(&self, name: &str) -> Option<(BdevId, BdevRef)> {
        let inner = self.read();
        let id = *inner.names.get(name)?;
        inner.slots[id as usize]
            .as_ref()
            .map(|e| (id, e.bdev.clone()))
    }

    /// Every live bdev, in creation order.
    pub fn list(&self) -> Vec<Listed> {
        self.read()
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, s)| {
                s.as_ref().map(|e| Listed {
                    id: id as BdevId,
                    bdev: e.bdev.clone(),
                    claimed_by: e.claimed_by.clone(),
                })
            })
            .collect()
    }
}
