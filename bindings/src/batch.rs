//! Moving a batch of values into ring slots with one copy.
//!
//! The lanes between reactors gather messages in a `Vec` and then move them into the ring's
//! free slots. `rtrb`'s `fill_from_iter` moves them one at a time, through an iterator; moved
//! as bytes, one copy per contiguous run of slots, a round trip of lane messages cost each
//! core 19 ns instead of 33 on close cores (`tidepool-perf --bench lanes`; BENCHMARKS.md,
//! volume section).

use std::ptr;

/// Moves values from the front of `queue` into a write chunk of `rtrb` and commits them, as
/// many as the chunk has slots for: what `fill_from_iter(queue.drain(..n))` does, with one
/// copy per contiguous run of slots and one shift of what stays in `queue`. Returns how many
/// moved (`n`); the rest stay in `queue`, in order.
pub fn fill_chunk<T>(
    mut chunk: rtrb::chunks::WriteChunkUninit<'_, T>,
    queue: &mut Vec<T>,
) -> usize {
    let (first, second) = chunk.as_mut_slices();
    let n = queue.len().min(first.len() + second.len());
    if n == 0 {
        // Nothing moves; an uncommitted chunk hands no slot to the consumer.
        return 0;
    }
    let into_first = n.min(first.len());
    let rest = queue.len() - n;
    let src = queue.as_mut_ptr();
    // SAFETY: `queue[..n]` are initialized values; `first` has room for `into_first` of them
    // and `second` for the other `n - into_first` (`n` is at most the two slices' lengths);
    // the slices are the ring's slots, apart from `queue`'s buffer. The copies move the
    // values into the slots. Then `queue[n..]` (initialized) moves to the front (`ptr::copy`
    // allows the overlap), and the length becomes `rest`, so that `queue` never drops the
    // moved values. `commit(n)` publishes the first `n` slots of the chunk (`first`, then
    // `second`): exactly the ones written. Nothing here can panic.
    unsafe {
        ptr::copy_nonoverlapping(src, first.as_mut_ptr().cast::<T>(), into_first);
        ptr::copy_nonoverlapping(
            src.add(into_first),
            second.as_mut_ptr().cast::<T>(),
            n - into_first,
        );
        ptr::copy(src.add(n), src, rest);
        queue.set_len(rest);
        chunk.commit(n);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// Values that count their owners, to catch a leak or a double drop.
    fn counted(marker: &Rc<()>, ids: std::ops::Range<u32>) -> Vec<(u32, Rc<()>)> {
        ids.map(|i| (i, Rc::clone(marker))).collect()
    }

    fn ids(values: &[(u32, Rc<()>)]) -> Vec<u32> {
        values.iter().map(|v| v.0).collect()
    }

    #[test]
    fn a_batch_crosses_the_ring_end_in_order_and_each_value_is_dropped_once() {
        let marker = Rc::new(());
        let (mut tx, mut rx) = rtrb::RingBuffer::<(u32, Rc<()>)>::new(4);
        // Move the ring's indices so that the next chunk wraps around.
        let mut three = counted(&marker, 1..4);
        assert_eq!(fill_chunk(tx.write_chunk_uninit(3).unwrap(), &mut three), 3);
        assert!(three.is_empty());
        let got: Vec<_> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(ids(&got), vec![1, 2, 3]);
        // Four slots, two before the ring's end and two after it, for five values.
        let mut queue = counted(&marker, 10..15);
        assert_eq!(fill_chunk(tx.write_chunk_uninit(4).unwrap(), &mut queue), 4);
        assert_eq!(ids(&queue), vec![14]);
        let got2: Vec<_> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(ids(&got2), vec![10, 11, 12, 13]);
        assert_eq!(Rc::strong_count(&marker), 9);
        drop((got, got2, queue, tx, rx));
        assert_eq!(Rc::strong_count(&marker), 1);
    }

    #[test]
    fn a_full_ring_or_an_empty_queue_moves_nothing_and_keeps_the_queue() {
        let marker = Rc::new(());
        let (mut tx, mut rx) = rtrb::RingBuffer::<(u32, Rc<()>)>::new(2);
        let mut two = counted(&marker, 0..2);
        assert_eq!(fill_chunk(tx.write_chunk_uninit(2).unwrap(), &mut two), 2);
        // The ring is full: a chunk of no slots, with values waiting.
        let mut waiting = counted(&marker, 5..8);
        assert_eq!(
            fill_chunk(tx.write_chunk_uninit(0).unwrap(), &mut waiting),
            0
        );
        assert_eq!(ids(&waiting), vec![5, 6, 7]);
        // Room, but nothing to send.
        assert!(rx.pop().is_ok());
        let mut empty = Vec::new();
        assert_eq!(fill_chunk(tx.write_chunk_uninit(1).unwrap(), &mut empty), 0);
        assert_eq!(rx.slots(), 1, "an uncommitted chunk publishes nothing");
        drop((waiting, tx, rx));
        assert_eq!(Rc::strong_count(&marker), 1);
    }
}
