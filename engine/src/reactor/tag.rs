//! The tag of an I/O whose origin is a reactor's router (`ROUTER_TASK`): which of the
//! router's records the completion belongs to. The one encoding of those bits; the router,
//! the copies and the lanes all go through [`RouterTag`].
//!
//! ```text
//! bit 31  30  29  28  27..20   19..0          63..32
//!     1   ------- one-shard slot (31 bits) --         0        Single: a one-shard request
//!     0   1   M   T   copy     slot                   0        Copy: a copy's own I/O
//!     0   0   ---- parent slot (30 bits) ----         delta    Piece: a piece of a request
//! ```
//!
//! - A Single's tag fits 32 bits, and bit 31 is what tells it from a remote slot in a lane
//!   message's 32-bit slot field (see `remote`).
//! - A Copy's `M` says a mirrored client write (else a chunk), `T` its target half. Its copy
//!   index has 8 bits: a reactor runs at most [`MAX_COPIES`] copies at once, and `start_copy`
//!   refuses one more with an error (before this bound, the 257th copy decoded as copy 0).
//!   Its slot (a chunk or a mirrored write in flight) has 20 bits.
//! - A Piece's `delta` is its offset in blocks from its request's start (a request is at most
//!   `u32::MAX` blocks long).
//!
//! Every bound is checked where the number is allocated (a slot table that would outgrow its
//! field is a programmer error and asserts there); [`RouterTag::encode`] debug-asserts them
//! again, and a test round-trips every variant at its bounds.

/// Bit 31: a one-shard request's slot.
const SINGLE_BIT: u64 = 1 << 31;
/// Bit 30: a copy's own I/O.
const COPY_BIT: u64 = 1 << 30;
const MIRROR_BIT: u64 = 1 << 29;
const TARGET_BIT: u64 = 1 << 28;
const COPY_SHIFT: u32 = 20;
const PIECE_DELTA_SHIFT: u32 = 32;

/// One-shard slots a router may have: below [`COPY_BIT`], as the slot tables have always
/// been bounded (31 bits would fit).
pub(super) const MAX_SINGLES: usize = 1 << 30;
/// Parent slots (requests cut in pieces) a router may have.
pub(super) const MAX_PARENTS: usize = 1 << 30;
/// Copies one reactor runs at once (8 bits of copy index).
pub const MAX_COPIES: usize = 1 << 8;
/// Chunks plus mirrored writes one copy has in flight (20 bits of slot).
pub(super) const MAX_COPY_SLOTS: usize = 1 << COPY_SHIFT;
/// Set in a lane message's 32-bit slot when it names the sender router's one-shard slot
/// (remote slots are numbered below it).
pub(super) const SINGLE_LANE_SLOT: u32 = SINGLE_BIT as u32;

/// What one of a copy's I/Os is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CopyIo {
    /// A chunk: read from the source, then written to the target.
    Chunk,
    /// A mirrored client write: its source half, or (`target`) its target half.
    Mirror { target: bool },
}

/// A router-origin I/O's tag, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RouterTag {
    /// A piece of request `parent`, `delta_blocks` from its start.
    Piece { parent: u32, delta_blocks: u64 },
    /// A whole one-shard request, kept in one-shard slot `slot`.
    Single { slot: u32 },
    /// One of copy `copy`'s own I/Os, kept in its slot `slot` (a chunk's or a mirror's).
    Copy {
        copy: usize,
        io: CopyIo,
        slot: usize,
    },
}

impl RouterTag {
    #[inline]
    pub(super) fn encode(self) -> u64 {
        match self {
            RouterTag::Piece {
                parent,
                delta_blocks,
            } => {
                debug_assert!((parent as usize) < MAX_PARENTS && delta_blocks <= u32::MAX as u64);
                (delta_blocks << PIECE_DELTA_SHIFT) | parent as u64
            }
            RouterTag::Single { slot } => {
                debug_assert!((slot as usize) < MAX_SINGLES);
                SINGLE_BIT | slot as u64
            }
            RouterTag::Copy { copy, io, slot } => {
                debug_assert!(copy < MAX_COPIES && slot < MAX_COPY_SLOTS);
                let kind = match io {
                    CopyIo::Chunk => 0,
                    CopyIo::Mirror { target: false } => MIRROR_BIT,
                    CopyIo::Mirror { target: true } => MIRROR_BIT | TARGET_BIT,
                };
                COPY_BIT | kind | ((copy as u64) << COPY_SHIFT) | slot as u64
            }
        }
    }

    #[inline]
    pub(super) fn decode(tag: u64) -> RouterTag {
        if tag & SINGLE_BIT != 0 {
            return RouterTag::Single {
                slot: (tag & !SINGLE_BIT) as u32,
            };
        }
        if tag & COPY_BIT != 0 {
            let io = match (tag & MIRROR_BIT != 0, tag & TARGET_BIT != 0) {
                (false, _) => CopyIo::Chunk,
                (true, target) => CopyIo::Mirror { target },
            };
            return RouterTag::Copy {
                copy: ((tag >> COPY_SHIFT) as usize) & (MAX_COPIES - 1),
                io,
                slot: (tag as usize) & (MAX_COPY_SLOTS - 1),
            };
        }
        RouterTag::Piece {
            parent: tag as u32,
            delta_blocks: tag >> PIECE_DELTA_SHIFT,
        }
    }

    /// Whether `tag` is a [`RouterTag::Single`] (the hot path's one test, without a decode).
    #[inline]
    pub(super) fn is_single(tag: u64) -> bool {
        tag & SINGLE_BIT != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_at_its_bounds_and_none_reads_as_another() {
        let mut tags = Vec::new();
        for parent in [0, 1, MAX_PARENTS as u32 - 1] {
            for delta_blocks in [0, 1, u32::MAX as u64] {
                tags.push(RouterTag::Piece {
                    parent,
                    delta_blocks,
                });
            }
        }
        for slot in [0, 1, MAX_SINGLES as u32 - 1] {
            tags.push(RouterTag::Single { slot });
        }
        for copy in [0, 1, MAX_COPIES - 1] {
            for io in [
                CopyIo::Chunk,
                CopyIo::Mirror { target: false },
                CopyIo::Mirror { target: true },
            ] {
                for slot in [0, 1, MAX_COPY_SLOTS - 1] {
                    tags.push(RouterTag::Copy { copy, io, slot });
                }
            }
        }
        for t in &tags {
            let bits = t.encode();
            assert_eq!(RouterTag::decode(bits), *t, "{bits:#x}");
            assert_eq!(
                RouterTag::is_single(bits),
                matches!(t, RouterTag::Single { .. })
            );
        }
        // A Single fits a lane's 32-bit slot, with the lane's marker bit.
        let single = RouterTag::Single { slot: 7 }.encode();
        assert_eq!(single as u32 & SINGLE_LANE_SLOT, SINGLE_LANE_SLOT);
        assert_eq!(single >> 32, 0);
    }
}
