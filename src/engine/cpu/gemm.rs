//! Matrix products through `gemm` (the crate candle's own matmul uses), on row-major views with
//! any strides, so transposes cost nothing; and the linear-layer products built on them.

use gemm::Parallelism;
use rayon::prelude::*;

use super::float::Elem;

pub(crate) fn parallelism() -> Parallelism {
    let n = candle_core::utils::get_num_threads();
    if n > 1 {
        Parallelism::Rayon(n)
    } else {
        Parallelism::None
    }
}

/// A row-major matrix view: element (r, c) at `r·rs + c·cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub(crate) d: &'a [T],
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

pub(crate) fn rm<T>(d: &[T], cols: usize) -> Mat<'_, T> {
    Mat { d, rs: cols, cs: 1 }
}

/// Transposed view of a row-major (rows × cols) matrix.
pub(crate) fn tr<T>(d: &[T], cols: usize) -> Mat<'_, T> {
    Mat { d, rs: 1, cs: cols }
}

/// `dst (m × n, row-major) = [dst +] a (m × k) · b (k × n)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    mm_rows(m, n, k, dst, n, acc, a, b, par)
}

/// [`mm`] into rows of `dst` that lie `dst_rs` elements apart (a column block of a wider
/// matrix).
#[allow(clippy::too_many_arguments)]
pub(crate) fn mm_rows<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [T],
    dst_rs: usize,
    acc: bool,
    a: Mat<T>,
    b: Mat<T>,
    par: Parallelism,
) {
    assert!(
        m == 0 || n == 0 || (dst_rs >= n && (m - 1) * dst_rs + n <= dst.len()),
        "gemm: destination too small"
    );
    let last =
        |x: Mat<T>, rows: usize, cols: usize| (rows.max(1) - 1) * x.rs + (cols.max(1) - 1) * x.cs;
    assert!(
        m == 0 || k == 0 || (last(a, m, k) < a.d.len() && last(b, k, n) < b.d.len()),
        "gemm: operand too small"
    );
    // SAFETY: the asserts above keep every index gemm touches inside the slices.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            acc,
            a.d.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// `x Wᵀ + b` for rows x (R × in), W (out × in), b (out).
pub(crate) fn linear<T: Elem>(x: &[T], w: &[T], b: &[T], inp: usize) -> Vec<T> {
    let out = b.len();
    let rows = x.len() / inp;
    let mut y = vec![T::zero(); rows * out];
    y.par_chunks_mut(out * 64)
        .for_each(|c| c.chunks_mut(out).for_each(|r| r.copy_from_slice(b)));
    mm(
        rows,
        out,
        inp,
        &mut y,
        true,
        rm(x, inp),
        tr(w, inp),
        parallelism(),
    );
    y
}

/// `dx = dy W` (rows × in) of a linear layer's input, for dy (rows × out) and W (out × in).
pub(crate) fn input_grad<T: Elem>(dy: &[T], w: &[T], out: usize, inp: usize) -> Vec<T> {
    let rows = dy.len() / out;
    let mut dx = vec![T::zero(); rows * inp];
    mm(
        rows,
        inp,
        out,
        &mut dx,
        false,
        rm(dy, out),
        rm(w, inp),
        parallelism(),
    );
    dx
}

/// `dW = dyᵀ x` (out × in) into `dst`.
pub(crate) fn weight_grad<T: Elem>(dst: &mut [T], dy: &[T], x: &[T], out: usize, inp: usize) {
    let rows = dy.len() / out;
    mm(
        out,
        inp,
        rows,
        dst,
        false,
        tr(dy, out),
        rm(x, inp),
        parallelism(),
    );
}
