//! The on-device format of pool metadata.
//!
//! Every member of a pool starts with a metadata area of two slots of [`SLOT_BYTES`] each;
//! shard extents follow from [`DATA_START_BYTES`]. A slot holds one generation of the whole
//! pool description (members, volumes, every shard's placement and owner), so any one member
//! describes the pool. Generation `g` is written to slot `g % 2` of every member, so a write
//! torn by a crash leaves generation `g - 1` whole in the other slot.
//!
//! A slot is a 64-byte header, little-endian, then the payload:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | magic `TIDEPOOL` |
//! | 8..12 | format version ([`FORMAT_VERSION`]) |
//! | 12..16 | this member's index in the pool |
//! | 16..32 | pool uuid (16 bytes) |
//! | 32..40 | generation |
//! | 40..44 | payload length in bytes |
//! | 44..48 | member count |
//! | 48..52 | CRC-32C of the header (this field as zero) and the payload |
//! | 52..64 | zero |
//!
//! The payload is the [`PoolRecord`] as JSON: metadata is written rarely and read once at
//! start-up, and JSON lets a person read it off the device (`dd | strings`). A slot that
//! fails any check (magic, version, length, CRC) is treated as absent.

use super::crc32c::crc32c;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"TIDEPOOL";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_BYTES: usize = 64;
/// One metadata slot.
pub const SLOT_BYTES: u64 = 1 << 20;
/// Where shard extents start on a member: after the two slots.
pub const DATA_START_BYTES: u64 = 2 * SLOT_BYTES;

/// One member as the pool remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The bdev's name when this generation was written (for people, and for `save_config`'s
    /// `pool_import`; members are known by `uuid`, since device names shift).
    pub bdev_name: String,
    /// The member's own identity, given at pool_create and kept through renumberings. (Empty
    /// in pools made before it existed: those members are known by name.)
    #[serde(default)]
    pub uuid: String,
    /// Missing when this generation was written, since the import at `Some(g)` that found it
    /// gone: it holds at most generation `g` of this description's history. A newer one on
    /// it was written elsewhere (see `PoolService::import`'s check for a divided pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_since: Option<u64>,
    pub num_blocks: u64,
    /// Shard extents the member holds.
    pub extents: u64,
}

/// Where one shard lives and which reactor serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    pub member: u32,
    pub extent: u64,
    pub owner: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub uuid: String,
    pub num_blocks: u64,
    pub shards: Vec<ShardRecord>,
}

/// A whole pool, as one slot holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    pub uuid: String,
    pub block_size: u32,
    pub shard_blocks: u64,
    pub members: Vec<MemberRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// `pool_delete` began: this generation marks the pool for deletion before any slot is
    /// wiped, so that an import after a crash part-way finishes the deletion instead of
    /// bringing back an older generation. Left out of the encoding when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
}

impl MemberRecord {
    /// Whether `other` (from another description of the same pool) is this member: the same
    /// member uuid, or for pools made before member uuids, the same name.
    pub fn is(&self, other: &MemberRecord) -> bool {
        match other.uuid.is_empty() {
            true => self.uuid.is_empty() && self.bdev_name == other.bdev_name,
            false => self.uuid == other.uuid,
        }
    }
}

impl PoolRecord {
    /// Whether a shard of some volume lives at extent `extent` of member `member`.
    pub fn places_shard_at(&self, member: u32, extent: u64) -> bool {
        self.volumes
            .iter()
            .flat_map(|v| &v.shards)
            .any(|s| s.member == member && s.extent == extent)
    }
}

/// A slot that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub member_index: u32,
    pub generation: u64,
    pub record: PoolRecord,
}

impl Slot {
    /// The member that holds this slot, as its own description gives it.
    fn own_member(&self) -> Option<&MemberRecord> {
        self.record.members.get(self.member_index as usize)
    }

    /// The index description `chosen` (of the same pool) gives the member that holds this
    /// slot: found by the member uuid its own description gives it, as its index may have
    /// changed since (a removal renumbers the rest) and its bdev name too (device names shift
    /// when a disk goes missing). Members of pools made before member uuids are found by name.
    pub fn index_in(&self, chosen: &PoolRecord) -> Option<usize> {
        let own = self.own_member()?;
        chosen.members.iter().position(|m| m.is(own))
    }
}

/// Why a slot was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("no tidepool magic")]
    NoMagic,
    #[error("format version {0} (this build reads {FORMAT_VERSION})")]
    Version(u32),
    #[error("payload length {0} does not fit the slot")]
    Length(u64),
    #[error("checksum mismatch (torn or corrupt)")]
    Checksum,
    #[error("payload: {0}")]
    Payload(String),
    #[error("the pool description needs {0} bytes; a slot holds {SLOT_BYTES}")]
    TooBig(usize),
}

/// A uuid string as 16 bytes (non-hex characters are skipped; a short uuid is zero-padded).
fn uuid_bytes(uuid: &str) -> [u8; 16] {
    let digits: Vec<u8> = uuid
        .chars()
        .filter_map(|c| c.to_digit(16).map(|d| d as u8))
        .collect();
    let mut out = [0u8; 16];
    for (i, pair) in digits.chunks(2).take(16).enumerate() {
        out[i] = pair[0] << 4 | pair.get(1).copied().unwrap_or(0);
    }
    out
}

/// The bytes of a slot: header and payload, zero-padded to a multiple of `block_size`.
pub fn encode(
    record: &PoolRecord,
    member_index: u32,
    generation: u64,
    block_size: u32,
) -> Result<Vec<u8>, SlotError> {
    let payload = serde_json::to_vec(record).expect("a record always serializes");
    let used = HEADER_BYTES + payload.len();
    if used as u64 > SLOT_BYTES {
        return Err(SlotError::TooBig(used));
    }
    let len = used.div_ceil(block_size as usize) * block_size as usize;
    let mut out = vec![0u8; len];
    out[0..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&member_index.to_le_bytes());
    out[16..32].copy_from_slice(&uuid_bytes(&record.uuid));
    out[32..40].copy_from_slice(&generation.to_le_bytes());
    out[40..44].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[44..48].copy_from_slice(&(record.members.len() as u32).to_le_bytes());
    out[HEADER_BYTES..used].copy_from_slice(&payload);
    let crc = crc32c(&out[..used]);
    out[48..52].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Whether `bytes` start with the tidepool magic (a member of some pool, valid or not).
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[0..8] == MAGIC
}

/// Checks and decodes a slot read from a device (at least its header and payload).
pub fn decode(bytes: &[u8]) -> Result<Slot, SlotError> {
    if bytes.len() < HEADER_BYTES || !has_magic(bytes) {
        return Err(SlotError::NoMagic);
    }
    let version = le_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(SlotError::Version(version));
    }
    let payload_len = le_u32(bytes, 40) as usize;
    let used = HEADER_BYTES + payload_len;
    if used as u64 > SLOT_BYTES || used > bytes.len() {
        return Err(SlotError::Length(payload_len as u64));
    }
    let mut header = [0u8; HEADER_BYTES];
    header.copy_from_slice(&bytes[..HEADER_BYTES]);
    let stored_crc = le_u32(&header, 48);
    header[48..52].fill(0);
    let crc = super::crc32c::extend(crc32c(&header), &bytes[HEADER_BYTES..used]);
    if crc != stored_crc {
        return Err(SlotError::Checksum);
    }
    let record: PoolRecord = serde_json::from_slice(&bytes[HEADER_BYTES..used])
        .map_err(|e| SlotError::Payload(e.to_string()))?;
    let member_index = le_u32(bytes, 12);
    if uuid_bytes(&record.uuid) != bytes[16..32]
        || le_u32(bytes, 44) as usize != record.members.len()
        || member_index as usize >= record.members.len()
    {
        return Err(SlotError::Payload(
            "header and payload disagree".to_string(),
        ));
    }
    Ok(Slot {
        member_index,
        generation: le_u64(bytes, 32),
        record,
    })
}

/// The newer of a member's two slots; `None` when neither is valid.
pub fn newest(slots: [Result<Slot, SlotError>; 2]) -> Option<Slot> {
    let [a, b] = slots;
    match (a.ok(), b.ok()) {
        (Some(a), Some(b)) => Some(if b.generation > a.generation { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The slot generation `generation` is written to.
pub fn slot_of(generation: u64) -> u64 {
    generation % 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> PoolRecord {
        PoolRecord {
            name: "pool0".into(),
            uuid: "0123abcd-0000-4000-8000-00000000beef".into(),
            block_size: 4096,
            shard_blocks: 256,
            members: vec![
                MemberRecord {
                    bdev_name: "A".into(),
                    uuid: "0123abcd-0000-4000-8000-00000000000a".into(),
                    absent_since: None,
                    num_blocks: 10_000,
                    extents: 38,
                },
                MemberRecord {
                    bdev_name: "B".into(),
                    uuid: "0123abcd-0000-4000-8000-00000000000b".into(),
                    absent_since: None,
                    num_blocks: 10_000,
                    extents: 38,
                },
            ],
            volumes: vec![VolumeRecord {
                name: "vol0".into(),
                uuid: "11111111-2222-4333-8444-555555555555".into(),
                num_blocks: 512,
                shards: vec![
                    ShardRecord {
                        member: 0,
                        extent: 0,
                        owner: 0,
                    },
                    ShardRecord {
                        member: 1,
                        extent: 0,
                        owner: 1,
                    },
                ],
            }],
            deleting: false,
        }
    }

    #[test]
    fn a_slot_round_trips_and_is_block_aligned() {
        let bytes = encode(&record(), 1, 7, 4096).unwrap();
        assert_eq!(bytes.len() % 4096, 0);
        let slot = decode(&bytes).unwrap();
        assert_eq!(slot.member_index, 1);
        assert_eq!(slot.generation, 7);
        assert_eq!(slot.record, record());
    }

    #[test]
    fn every_single_byte_corruption_of_a_slot_is_caught() {
        let bytes = encode(&record(), 0, 3, 512).unwrap();
        let used = HEADER_BYTES + le_u32(&bytes, 40) as usize;
        for i in 0..used {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_torn_write_falls_back_to_the_other_slot() {
        let old = encode(&record(), 0, 4, 512).unwrap();
        let mut newer = record();
        newer.volumes[0].shards = vec![newer.volumes[0].shards[0]; 100];
        let new = encode(&newer, 0, 5, 512).unwrap();
        // Torn: only the first 512-byte block of generation 5 (several blocks long) reached
        // the device; the rest of the slot still holds an older generation's bytes.
        assert!(new.len() > 512);
        let mut torn = old.clone();
        torn[..512].copy_from_slice(&new[..512]);
        let pick = newest([decode(&old), decode(&torn)]).unwrap();
        assert_eq!(pick.generation, 4);
        assert_eq!(pick.record, record());
        // Both whole: the newer wins, whichever slot it is in.
        assert_eq!(newest([decode(&new), decode(&old)]).unwrap().generation, 5);
        assert_eq!(newest([decode(&old), decode(&new)]).unwrap().generation, 5);
        assert!(newest([decode(&[0u8; 4096]), decode(&torn[..100])]).is_none());
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let bytes = encode(&record(), 0, 1, 512).unwrap();
        assert_eq!(decode(&[0u8; 512]), Err(SlotError::NoMagic));
        let mut v = bytes.clone();
        v[8] = 9;
        assert_eq!(decode(&v), Err(SlotError::Version(9)));
        let mut v = bytes.clone();
        v[40..44].copy_from_slice(&(SLOT_BYTES as u32).to_le_bytes());
        assert!(matches!(decode(&v), Err(SlotError::Length(_))));
        let mut huge = record();
        huge.volumes[0].shards = vec![huge.volumes[0].shards[0]; 40_000];
        assert!(matches!(
            encode(&huge, 0, 1, 512),
            Err(SlotError::TooBig(_))
        ));
    }
}
