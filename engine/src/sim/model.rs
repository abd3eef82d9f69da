//! The checker's model of the volume: for each block, every value it may hold.
//!
//! A value is what a write leaves in a block: a write's id (its blocks carry it, see
//! [`encode`]), or 0 for zeroes (never written, write-zeroes, unmap). Each block keeps its
//! *candidates*: the value of the last write to it acknowledged as done, plus the values of
//! writes still in flight or failed (a failed write may or may not have landed). When a write
//! W is acknowledged, every candidate that ended (acknowledged or failed) before W was sent
//! is gone: W landed after it. A candidate that ended after W was sent stays: the device may
//! have put it down after W.
//!
//! A read sent at `s` may return any value that was a candidate at some moment between `s`
//! and its completion: a current one, or one removed at or after `s` (kept, with the time,
//! in `gone` until no read in flight is older). Anything else is a lost acknowledged write
//! (an older value) or data never written to the block (a value of no write to it).

use crate::time::Nanos;

/// Bytes of one block that carry the header (volume block and value).
const HEADER: usize = 16;

/// The bytes of volume block `block` after the write whose value is `value` (not 0).
pub fn encode(block: u64, value: u64, out: &mut [u8]) {
    out[..8].copy_from_slice(&block.to_le_bytes());
    out[8..16].copy_from_slice(&value.to_le_bytes());
    let fill = (block.wrapping_mul(31) ^ value.wrapping_mul(0x9e37_79b9)) as u8 | 1;
    out[HEADER..].fill(fill);
}

/// What a block read back holds: `Ok(value)` if it is zeroes or exactly what some write to
/// `block` left; `Err(why)` otherwise.
pub fn decode(block: u64, data: &[u8]) -> Result<u64, String> {
    if data.iter().all(|&b| b == 0) {
        return Ok(0);
    }
    let at = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let value = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let mut want = vec![0u8; data.len()];
    encode(block, value, &mut want);
    if at != block || want != data {
        return Err(format!(
            "block {block} holds bytes no write to it left (header: block {at}, write {value})"
        ));
    }
    Ok(value)
}

#[derive(Clone, Copy, Debug)]
struct Candidate {
    /// The operation (0: the volume's initial zeroes).
    op: u64,
    value: u64,
    sent: Nanos,
    /// When it was acknowledged or failed.
    ended: Option<Nanos>,
}

#[derive(Default)]
struct Block {
    candidates: Vec<Candidate>,
    /// Values removed from the candidates, and when.
    gone: Vec<(u64, Nanos)>,
}

/// Per block of the volume, the values it may hold.
pub struct Model {
    blocks: Vec<Block>,
}

impl Model {
    pub fn new(num_blocks: u64) -> Model {
        let zero = Candidate {
            op: 0,
            value: 0,
            sent: 0,
            ended: Some(0),
        };
        Model {
            blocks: (0..num_blocks)
                .map(|_| Block {
                    candidates: vec![zero],
                    gone: Vec::new(),
                })
                .collect(),
        }
    }

    /// A write-like operation `op` leaving `value` in `[first, first + n)` was sent at `at`.
    pub fn sent(&mut self, op: u64, value: u64, first: u64, n: u64, at: Nanos) {
        for b in &mut self.blocks[first as usize..(first + n) as usize] {
            b.candidates.push(Candidate {
                op,
                value,
                sent: at,
                ended: None,
            });
        }
    }

    /// Operation `op` on `[first, first + n)` ended at `at`, acknowledged or failed.
    pub fn ended(&mut self, op: u64, first: u64, n: u64, at: Nanos, success: bool) {
        for b in &mut self.blocks[first as usize..(first + n) as usize] {
            let me = b
                .candidates
                .iter_mut()
                .find(|c| c.op == op)
                .expect("an operation ends once");
            me.ended = Some(at);
            let sent = me.sent;
            if !success {
                continue;
            }
            let Block { candidates, gone } = b;
            candidates.retain(|c| {
                let superseded = c.op != op && c.ended.is_some_and(|e| e < sent);
                if superseded {
                    gone.push((c.value, at));
                }
                !superseded
            });
        }
    }

    /// Checks a read of `[first, first + n)` sent at `sent` that returned `data`.
    pub fn check_read(
        &self,
        first: u64,
        data: &[u8],
        block_size: usize,
        sent: Nanos,
    ) -> Result<(), String> {
        for (i, bytes) in data.chunks(block_size).enumerate() {
            let block = first + i as u64;
            let value = decode(block, bytes)?;
            let b = &self.blocks[block as usize];
            let now = b.candidates.iter().any(|c| c.value == value);
            let then = b.gone.iter().any(|&(v, at)| v == value && at >= sent);
            if !now && !then {
                let may: Vec<u64> = b.candidates.iter().map(|c| c.value).collect();
                return Err(format!(
                    "block {block} read back {} (a read sent at {sent} ns), but it may hold only \
                     {may:?}: an acknowledged write is lost",
                    if value == 0 {
                        "zeroes".to_string()
                    } else {
                        format!("write {value}")
                    }
                ));
            }
        }
        Ok(())
    }

    /// Forgets removed values no read in flight can return: those removed before `oldest`,
    /// the send time of the oldest read in flight (or everything, with none).
    pub fn prune(&mut self, oldest: Option<Nanos>) {
        for b in &mut self.blocks {
            match oldest {
                Some(t) => b.gone.retain(|&(_, at)| at >= t),
                None => b.gone.clear(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_superseded_value_is_refused_to_a_later_read_and_allowed_to_an_earlier_one() {
        let mut m = Model::new(4);
        let mut block = vec![0u8; 512];
        m.sent(1, 1, 0, 2, 10);
        m.ended(1, 0, 2, 20, true);
        m.sent(2, 2, 0, 1, 30);
        encode(0, 1, &mut block);
        // While write 2 is in flight, block 0 may hold 1 or 2; no longer zeroes.
        assert!(m.check_read(0, &block, 512, 25).is_ok());
        assert!(m.check_read(0, &[0; 512], 512, 25).is_err());
        m.ended(2, 0, 1, 40, true);
        assert!(m.check_read(0, &block, 512, 35).is_ok(), "sent before 40");
        assert!(m.check_read(0, &block, 512, 45).is_err(), "sent after 40");
        // Bytes of block 1 in block 0: never written there.
        encode(1, 1, &mut block);
        assert!(m.check_read(0, &block, 512, 25).is_err());
    }
}
