//! Moving a batch of values into ring slots with one copy.
//!
//! The lanes between reactors gather messages in a `Vec` and then move them into the ring's
//! free slots. Moved one by one (an iterator, as `rtrb`'s `fill_from_iter` does), a message
//! that is an enum with drop glue costs each core about twice what a plain value of the same
//! size does (`tidepool-perf --bench lanes`); moved as bytes, in one copy, it costs the same.

use std::mem::MaybeUninit;
use std::ptr;

/// Moves values from the front of `src` into the front of `dst`, as many as both hold, with
/// one bitwise copy; the rest of `src` moves up to its front, in order. Returns how many
/// moved: `dst[..n]` is initialized and owns them, and `src` no longer holds them.
pub fn move_front_into<T>(src: &mut Vec<T>, dst: &mut [MaybeUninit<T>]) -> usize {
    let n = src.len().min(dst.len());
    let rest = src.len() - n;
    // SAFETY: `src[..n]` are initialized values, `dst` has room for `n`, and the two do not
    // overlap (`dst` is borrowed mutably apart from `src`). The copy moves the values: the
    // length is set below so that `src` never drops them again.
    unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast::<T>(), n) };
    // SAFETY: `src[n..n + rest]` are initialized; `ptr::copy` allows the ranges to overlap.
    // After it, `src[..rest]` holds them and `src[rest..]` holds nothing `src` owns, so the
    // length becomes `rest`. Nothing between the copies can panic.
    unsafe {
        ptr::copy(src.as_ptr().add(n), src.as_mut_ptr(), rest);
        src.set_len(rest);
    }
    n
}

/// Moves values from the front of `queue` into a write chunk of `rtrb` and commits them:
/// what `WriteChunkUninit::fill_from_iter(queue.drain(..))` does, in at most two copies.
/// Returns how many moved; the rest stay in `queue`, in order.
pub fn fill_chunk<T>(
    mut chunk: rtrb::chunks::WriteChunkUninit<'_, T>,
    queue: &mut Vec<T>,
) -> usize {
    let (first, second) = chunk.as_mut_slices();
    let mut n = move_front_into(queue, first);
    if n == first.len() {
        n += move_front_into(queue, second);
    }
    // SAFETY: the first `n` slots of the chunk (`first` then `second`) were initialized by
    // `move_front_into`, which moved exactly `n` values into them.
    unsafe { chunk.commit(n) };
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    #[test]
    fn moves_the_front_keeps_the_rest_in_order_and_drops_each_value_once() {
        let marker = Rc::new(());
        let mut src: Vec<(u32, Rc<()>)> = (0..5).map(|i| (i, Rc::clone(&marker))).collect();
        let mut dst: [MaybeUninit<(u32, Rc<()>)>; 3] = [const { MaybeUninit::uninit() }; 3];
        assert_eq!(move_front_into(&mut src, &mut dst), 3);
        assert_eq!(src.iter().map(|v| v.0).collect::<Vec<_>>(), vec![3, 4]);
        // SAFETY: the first three slots were just initialized by `move_front_into`.
        let moved: Vec<(u32, Rc<()>)> = dst
            .iter()
            .map(|s| unsafe { s.assume_init_read() })
            .collect();
        assert_eq!(moved.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(Rc::strong_count(&marker), 6);
        drop(moved);
        drop(src);
        assert_eq!(Rc::strong_count(&marker), 1);
    }

    #[test]
    fn fills_a_chunk_across_the_ring_end_and_stops_when_full() {
        let (mut tx, mut rx) = rtrb::RingBuffer::<u32>::new(4);
        // Move the ring's indices so that the next chunk wraps around.
        let mut three = vec![1, 2, 3];
        assert_eq!(fill_chunk(tx.write_chunk_uninit(3).unwrap(), &mut three), 3);
        assert_eq!((rx.pop(), rx.pop(), rx.pop()), (Ok(1), Ok(2), Ok(3)));
        let mut queue = vec![10, 11, 12, 13, 14];
        assert_eq!(fill_chunk(tx.write_chunk_uninit(4).unwrap(), &mut queue), 4);
        assert_eq!(queue, vec![14]);
        let got: Vec<u32> = std::iter::from_fn(|| rx.pop().ok()).collect();
        assert_eq!(got, vec![10, 11, 12, 13]);
    }
}
