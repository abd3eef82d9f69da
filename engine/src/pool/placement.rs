//! Where a new volume's shards go: which member extent holds each shard, and which reactor
//! owns it.
//!
//! Members are taken in turn (skipping full or missing ones), starting one further for each
//! volume the pool already holds, so consecutive shards sit on different devices and
//! volumes do not all start on member 0. Owners follow `(i + i / lcm(members, reactors)) %
//! reactors`: shard `i`'s (member, owner) pair walks through every combination before any
//! repeats, so each reactor serves shards of every member, and each reactor's share of a
//! volume differs by at most one shard.

use super::metadata::{PoolRecord, ShardRecord};
use super::Pool;

impl Pool {
    /// Extents out of use though no shard of the record is placed there: reserved ones and
    /// old sources whose reads are still in flight.
    pub(super) fn taken(&self) -> Vec<(u32, u64)> {
        self.reserved
            .iter()
            .chain(&self.old_sources)
            .copied()
            .collect()
    }

    /// [`free_extents`] of this pool: what a new shard or a copy's target may take.
    pub(super) fn free_extents(&self) -> Vec<Vec<u64>> {
        free_extents(&self.record, &self.taken())
    }
}

/// Free extent indexes of every member, lowest first; `reserved` (member, extent) pairs are
/// taken (see `Pool::taken`).
pub fn free_extents(record: &PoolRecord, reserved: &[(u32, u64)]) -> Vec<Vec<u64>> {
    let mut used: Vec<Vec<bool>> = record
        .members
        .iter()
        .map(|m| vec![false; m.extents as usize])
        .collect();
    for v in &record.volumes {
        for s in &v.shards {
            used[s.member as usize][s.extent as usize] = true;
        }
    }
    for &(m, e) in reserved {
        if let Some(slot) = used.get_mut(m as usize).and_then(|u| u.get_mut(e as usize)) {
            *slot = true;
        }
    }
    used.iter()
        .map(|u| {
            u.iter()
                .enumerate()
                .filter(|(_, &x)| !x)
                .map(|(i, _)| i as u64)
                .collect()
        })
        .collect()
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Places `shards` shards on the members marked `present`, owned round `reactors`
/// reactors; `Err(free)` with the free extents there are when they are too few.
pub fn place(
    record: &PoolRecord,
    shards: usize,
    reactors: usize,
    present: &[bool],
    reserved: &[(u32, u64)],
) -> Result<Vec<ShardRecord>, u64> {
    let mut free = free_extents(record, reserved);
    for (m, list) in free.iter_mut().enumerate() {
        if !present[m] {
            list.clear();
        }
        // Hand out the lowest extents first.
        list.reverse();
    }
    let available: u64 = free.iter().map(|l| l.len() as u64).sum();
    if (available as usize) < shards {
        return Err(available);
    }
    let members = record.members.len();
    let lcm = members / gcd(members, reactors) * reactors;
    let mut next = record.volumes.len() % members;
    let mut out = Vec::with_capacity(shards);
    for i in 0..shards {
        while free[next].is_empty() {
            next = (next + 1) % members;
        }
        let extent = free[next].pop().expect("checked non-empty");
        out.push(ShardRecord {
            member: next as u32,
            extent,
            owner: ((i + i / lcm) % reactors) as u16,
        });
        next = (next + 1) % members;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::metadata::{MemberRecord, VolumeRecord};

    fn record(extents: &[u64]) -> PoolRecord {
        PoolRecord {
            name: "p".into(),
            uuid: "u".into(),
            block_size: 512,
            shard_blocks: 8,
            members: extents
                .iter()
                .map(|&e| MemberRecord {
                    bdev_name: "m".into(),
                    uuid: String::new(),
                    absent_since: None,
                    num_blocks: 0,
                    extents: e,
                })
                .collect(),
            volumes: Vec::new(),
            deleting: false,
        }
    }

    fn count<T: Copy + PartialEq>(
        shards: &[ShardRecord],
        key: impl Fn(&ShardRecord) -> T,
        of: T,
    ) -> usize {
        shards.iter().filter(|s| key(s) == of).count()
    }

    #[test]
    fn shards_spread_evenly_over_members_and_reactors_and_every_pair() {
        for (members, reactors) in [(2, 2), (1, 2), (2, 1), (3, 2), (2, 4), (4, 2)] {
            let r = record(&vec![100; members]);
            let shards = 2 * members * reactors;
            let placed = place(&r, shards, reactors, &vec![true; members], &[]).unwrap();
            for m in 0..members as u32 {
                assert_eq!(count(&placed, |s| s.member, m), shards / members);
            }
            for o in 0..reactors as u16 {
                assert_eq!(count(&placed, |s| s.owner, o), shards / reactors);
            }
            for m in 0..members as u32 {
                for o in 0..reactors as u16 {
                    let pair = placed
                        .iter()
                        .filter(|s| s.member == m && s.owner == o)
                        .count();
                    assert_eq!(pair, 2, "{members} members, {reactors} reactors: ({m},{o})");
                }
            }
        }
    }

    #[test]
    fn full_and_missing_members_are_skipped_and_used_extents_are_not_reused() {
        let mut r = record(&[1, 5, 4]);
        let first = place(&r, 3, 2, &[true, true, true], &[]).unwrap();
        r.volumes.push(VolumeRecord {
            name: "a".into(),
            uuid: "u".into(),
            num_blocks: 24,
            shards: first.clone(),
        });
        let second = place(&r, 4, 2, &[true, true, false], &[]).unwrap();
        assert!(
            second.iter().all(|s| s.member == 1),
            "member 0 is full, 2 missing"
        );
        let mut all: Vec<(u32, u64)> = first
            .iter()
            .chain(&second)
            .map(|s| (s.member, s.extent))
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 7, "no extent is handed out twice");
        assert_eq!(place(&r, 9, 2, &[true; 3], &[]), Err(7));
    }
}
