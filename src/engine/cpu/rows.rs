//! Work over blocks of rows with a fixed summation order: blocks are fixed by the row width
//! alone (about 32K elements each), per-block accumulators are added in block order, so column
//! sums (bias and LayerNorm gradients) are bitwise reproducible on any thread count. And the one
//! shared-mutable view of a buffer whose blocks write disjoint rows.

use std::ops::Range;

use rayon::prelude::*;

use super::float::Elem;
use super::simd::vectorised;

/// Rows per parallel block: about 32K elements, fixed by the row width alone so that sums over
/// blocks are added in the same order whatever the thread count.
pub(crate) fn block_rows(n: usize) -> usize {
    (32768 / n.max(1)).max(1)
}

/// Elements per parallel block of rows of width `n` (see [`block_rows`]).
pub(crate) fn block(n: usize) -> usize {
    block_rows(n) * n
}

/// Sums per-block accumulators in block order.
pub(crate) fn sum_blocks<T: Elem>(parts: &[Vec<T>], width: usize) -> Vec<T> {
    let mut total = vec![T::zero(); width];
    for p in parts {
        for (t, v) in total.iter_mut().zip(p) {
            *t += *v;
        }
    }
    total
}

/// Runs `f(rows of the block, accumulator)` over blocks of rows of width `width` in parallel
/// and returns the per-block accumulators (length `acc`) summed in block order.
pub(crate) fn rows_sum<T: Elem>(
    width: usize,
    rows: usize,
    acc: usize,
    f: impl Fn(Range<usize>, &mut [T]) + Sync,
) -> Vec<T> {
    let per = block_rows(width);
    let parts: Vec<Vec<T>> = (0..rows.div_ceil(per))
        .into_par_iter()
        .map(|bi| {
            let mut a = vec![T::zero(); acc];
            f(bi * per..((bi + 1) * per).min(rows), &mut a);
            a
        })
        .collect();
    sum_blocks(&parts, acc)
}

/// Column sums of `g` (…, N).
pub(crate) fn col_sums<T: Elem>(g: &[T], n: usize) -> Vec<T> {
    rows_sum(n, g.len() / n.max(1), n, |r, acc| {
        vectorised(
            #[inline(always)]
            || {
                let acc = &mut acc[..n];
                for g in g[r.start * n..r.end * n].chunks_exact(n) {
                    for j in 0..n {
                        acc[j] += g[j];
                    }
                }
            },
        )
    })
}

/// Mutable rows of a (· × width) buffer, shared by parallel blocks that each write their own
/// rows (the one way the kernels hand out disjoint mutable rows without splitting the slice
/// first).
#[derive(Clone, Copy)]
pub(crate) struct Rows<T>(*mut T, usize);
// SAFETY: a `Rows` is a pointer into a slice that outlives the parallel blocks using it, and
// `get` hands each block only its own rows, so sending it (or sharing it) between threads is as
// safe as sending the disjoint `&mut [T]` row slices themselves, which needs `T: Send`.
unsafe impl<T: Send> Send for Rows<T> {}
// SAFETY: as for `Send`: shared `&Rows` only ever yield disjoint row ranges.
unsafe impl<T: Send + Sync> Sync for Rows<T> {}

impl<T> Rows<T> {
    pub(crate) fn of(v: &mut [T], width: usize) -> Self {
        Self(v.as_mut_ptr(), width)
    }

    /// Rows `r` as a mutable slice.
    ///
    /// # Safety
    /// `r` lies inside the buffer given to [`Rows::of`], that buffer is alive and not otherwise
    /// borrowed, and no other live slice from this `Rows` overlaps `r` (each parallel block
    /// touches only its own rows).
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get(&self, r: Range<usize>) -> &mut [T] {
        // SAFETY: the caller guarantees the range is in bounds and exclusively this block's.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(r.start * self.1), r.len() * self.1) }
    }
}
