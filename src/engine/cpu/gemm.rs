//! Matrix products through `gemm` (the crate candle's own matmul uses), on row-major views with
//! any strides, so transposes cost nothing; and the linear-layer products built on them.
//!
//! Parallel products are cut into blocks that run on the rayon pool ([`split`]). With
//! `--features openblas` each block goes to the system's OpenBLAS instead of `gemm` (see
//! [`blas`]).

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
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(feature = "openblas")]
    let blas = blas::layout(m, n, k, dst_rs, &a, &b);
    let threads = match par {
        Parallelism::None => 1,
        Parallelism::Rayon(0) => rayon::current_num_threads(),
        Parallelism::Rayon(n) => n,
    };
    let c = Ptr(dst.as_mut_ptr());
    // Only the parallel products are timed: the single-threaded ones run inside parallel
    // stages, on several threads at once.
    let timed = threads > 1 && super::prof::on();
    let t0 = timed.then(std::time::Instant::now);
    split(m, n, threads, |(r0, r1), (c0, c1)| {
        // the block's operands and destination start at these offsets into the views
        let (a_off, b_off, c_off) = (r0 * a.rs, c0 * b.cs, r0 * dst_rs + c0);
        let (bm, bn) = (r1 - r0, c1 - c0);
        let dst = c.at(c_off);
        #[cfg(feature = "openblas")]
        if let Some(l) = blas {
            // SAFETY: as below; the layout was checked for the whole product.
            unsafe {
                blas::gemm::<T>(
                    l,
                    bm,
                    bn,
                    k,
                    acc,
                    a.d.as_ptr().wrapping_add(a_off),
                    b.d.as_ptr().wrapping_add(b_off),
                    dst,
                )
            };
            return;
        }
        // SAFETY: the asserts above keep every index of the whole product inside the slices,
        // a block's offsets stay inside it, and the blocks write disjoint parts of `dst`
        // (rows r0..r1 × columns c0..c1).
        unsafe { gemm_one(bm, bn, k, dst, dst_rs, acc, (a, a_off), (b, b_off)) }
    });
    if let Some(t0) = t0 {
        super::prof::record_product(m, n, k, t0.elapsed().as_secs_f64());
    }
}

/// One single-threaded `gemm` call: `dst (m × n, rows `ldc` apart) = [dst +] a · b`, with the
/// operands' views starting `a.1` and `b.1` elements in.
///
/// # Safety
/// `dst` holds the m × n block at stride `ldc`, the views hold every index of the block from
/// their offsets, and no other thread writes the block.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_one<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    ldc: usize,
    acc: bool,
    a: (Mat<T>, usize),
    b: (Mat<T>, usize),
) {
    let ((a, a_off), (b, b_off)) = (a, b);
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldc as isize,
            acc,
            a.d.as_ptr().wrapping_add(a_off),
            a.cs as isize,
            a.rs as isize,
            b.d.as_ptr().wrapping_add(b_off),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// The destination of a product, handed to the rayon workers: each writes its own block.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: the blocks written through it are disjoint (see `split`).
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// The element `off` places on (a method, so closures capture the whole `Ptr`).
    fn at(self, off: usize) -> *mut T {
        self.0.wrapping_add(off)
    }
}

/// Runs `block((r0, r1), (c0, c1))` over disjoint blocks covering an m × n product: about two
/// blocks per thread, of whole 16-row (or 16-column) panels, cut along the longer side, on the
/// rayon pool (inline for one block). Measured on the 2-core machine against `gemm`'s own
/// parallel mode: DiffuSSM training 1.2× as fast (its 1568 × 128 × 128 products hand work
/// between threads less), the BiGS step about 1.08×. One thread: one block.
fn split(
    m: usize,
    n: usize,
    threads: usize,
    block: impl Fn((usize, usize), (usize, usize)) + Sync,
) {
    use rayon::prelude::*;
    let by_rows = m >= n;
    let len = if by_rows { m } else { n };
    let parts = if threads <= 1 {
        1
    } else {
        (2 * threads).min(len.div_ceil(16))
    };
    let step = len.div_ceil(parts.max(1)).div_ceil(16) * 16;
    let run = |p: usize| {
        let (lo, hi) = (p * step, ((p + 1) * step).min(len));
        if by_rows {
            block((lo, hi), (0, n))
        } else {
            block((0, m), (lo, hi))
        }
    };
    match len.div_ceil(step) {
        1 => run(0),
        blocks => (0..blocks).into_par_iter().for_each(run),
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

/// The system BLAS behind `--features openblas`. On the 2-core AVX2 machine of the README's
/// performance section, OpenBLAS 0.3 multiplies f32 1.2-1.3× as fast as the `gemm` crate
/// (2048³ back to back: 154-160 against 120-133 GFLOP/s); the BiGS step gains up to ~10%. Three functions of the C interface are all ssmlab needs, so they are
/// declared here and linked as `-lopenblas` (Debian: `libopenblas-dev`) rather than through
/// a binding crate. `SSMLAB_BLAS=0` turns it off at run time (for A/B timing and tests).
#[cfg(feature = "openblas")]
pub(crate) mod blas {
    use std::any::TypeId;
    use std::os::raw::c_int;
    use std::sync::OnceLock;

    use super::{Elem, Mat};

    const ROW_MAJOR: c_int = 101;
    const NO_TRANS: c_int = 111;
    const TRANS: c_int = 112;

    #[link(name = "openblas")]
    unsafe extern "C" {
        fn cblas_sgemm(
            layout: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f32,
            a: *const f32,
            lda: c_int,
            b: *const f32,
            ldb: c_int,
            beta: f32,
            c: *mut f32,
            ldc: c_int,
        );
        fn cblas_dgemm(
            layout: c_int,
            ta: c_int,
            tb: c_int,
            m: c_int,
            n: c_int,
            k: c_int,
            alpha: f64,
            a: *const f64,
            lda: c_int,
            b: *const f64,
            ldb: c_int,
            beta: f64,
            c: *mut f64,
            ldc: c_int,
        );
        fn openblas_set_num_threads(n: c_int);
    }

    /// Whether the BLAS is used: not with `SSMLAB_BLAS=0`. OpenBLAS runs one thread per call:
    /// ssmlab splits each product over the rayon pool itself (`split`), because OpenBLAS's
    /// own threads and rayon's, both spinning between calls, took turns on the same cores
    /// (measured: slower than one BLAS thread).
    pub(crate) fn enabled() -> bool {
        static ON: OnceLock<bool> = OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var("SSMLAB_BLAS").map_or(true, |v| v != "0");
            if on {
                // SAFETY: sets OpenBLAS's thread count; no other call is in flight yet.
                unsafe { openblas_set_num_threads(1) };
            }
            on
        })
    }

    /// A row-major operand (rows × cols) as cblas takes it: (transposed?, leading dimension).
    fn operand<T>(x: &Mat<T>, rows: usize, cols: usize) -> Option<(c_int, c_int)> {
        let ld = if x.cs == 1 && x.rs >= cols.max(1) {
            (NO_TRANS, x.rs)
        } else if x.rs == 1 && x.cs >= rows.max(1) {
            (TRANS, x.cs)
        } else {
            return None;
        };
        Some((ld.0, c_int::try_from(ld.1).ok()?))
    }

    /// How cblas takes a product: each operand's (transposed?, leading dimension), and the
    /// destination's.
    #[derive(Clone, Copy)]
    pub(crate) struct Layout {
        a: (c_int, c_int),
        b: (c_int, c_int),
        ldc: c_int,
    }

    /// The layout of `dst (m × n, rows `ldc` apart) = a (m × k) · b (k × n)` for cblas, or
    /// None where it cannot take it (off, an element type other than f32 and f64, strides or
    /// sizes beyond a C int); the caller then uses `gemm`.
    pub(crate) fn layout<T: Elem>(
        m: usize,
        n: usize,
        k: usize,
        ldc: usize,
        a: &Mat<T>,
        b: &Mat<T>,
    ) -> Option<Layout> {
        let t = TypeId::of::<T>();
        if k == 0 || !(t == TypeId::of::<f32>() || t == TypeId::of::<f64>()) || !enabled() {
            return None;
        }
        for x in [m, n, k] {
            c_int::try_from(x).ok()?;
        }
        Some(Layout {
            a: operand(a, m, k)?,
            b: operand(b, k, n)?,
            ldc: c_int::try_from(ldc).ok()?,
        })
    }

    /// One block of a product through cblas (single-threaded: blocks run on the rayon pool).
    ///
    /// # Safety
    /// `T` is f32 or f64 (as [`layout`] checked), the pointers hold the block's operands and
    /// destination at `l`'s strides, and no other thread writes the block.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn gemm<T: Elem>(
        l: Layout,
        m: usize,
        n: usize,
        k: usize,
        acc: bool,
        a: *const T,
        b: *const T,
        c: *mut T,
    ) {
        let (m, n, k) = (m as c_int, n as c_int, k as c_int);
        // the same call of cblas_sgemm or cblas_dgemm
        macro_rules! call {
            ($f:ident) => {
                $f(
                    ROW_MAJOR,
                    l.a.0,
                    l.b.0,
                    m,
                    n,
                    k,
                    1.0,
                    a.cast(),
                    l.a.1,
                    b.cast(),
                    l.b.1,
                    if acc { 1.0 } else { 0.0 },
                    c.cast(),
                    l.ldc,
                )
            };
        }
        // SAFETY: the caller's contract; the casts are identities for the checked type.
        unsafe {
            if TypeId::of::<T>() == TypeId::of::<f32>() {
                call!(cblas_sgemm)
            } else {
                call!(cblas_dgemm)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every layout the kernels use (either operand transposed, a column block of a wider
    /// destination, accumulate or not), f32 and f64, m × 41 by 41 × n: the product cut into
    /// blocks on the pool (and, with `--features openblas`, each block through OpenBLAS) is
    /// one `gemm` call's.
    fn blas_equals_gemm<T: Elem + std::fmt::Debug>(tol: f64, m: usize, n: usize) {
        let (k, ldc) = (41, n + 4);
        let val = |i: usize| T::of(((i * 7919) % 97) as f64 / 48.5 - 1.0);
        let a: Vec<T> = (0..m * k).map(val).collect();
        let b: Vec<T> = (0..k * n).map(|i| val(i + 13)).collect();
        let c0: Vec<T> = (0..m * ldc).map(|i| val(i + 5)).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // a transposed view reads the same matrix stored the other way round
            let at: Vec<T> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
            let bt: Vec<T> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let av = if ta { tr(&at, m) } else { rm(&a, k) };
            let bv = if tb { tr(&bt, k) } else { rm(&b, n) };
            for acc in [false, true] {
                let mut want = c0.clone();
                // SAFETY: the sizes are the ones the views were built for.
                unsafe { gemm_one(m, n, k, want.as_mut_ptr(), ldc, acc, (av, 0), (bv, 0)) };
                let mut got = c0.clone();
                #[cfg(feature = "openblas")]
                assert!(blas::layout(m, n, k, ldc, &av, &bv).is_some(), "BLAS taken");
                mm_rows(m, n, k, &mut got, ldc, acc, av, bv, parallelism());
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let (g, w) = (g.to_f64().unwrap(), w.to_f64().unwrap());
                    assert!(
                        (g - w).abs() <= tol * (1.0 + w.abs()),
                        "{ta} {tb} {acc} [{i}]"
                    );
                }
                // columns past n in each row are untouched
                for r in 0..m {
                    assert_eq!(
                        got[r * ldc + n..(r + 1) * ldc],
                        c0[r * ldc + n..(r + 1) * ldc]
                    );
                }
            }
        }
    }

    #[test]
    fn split_products_equal_one_gemm_call() {
        // split by rows (m ≥ n) and by columns, into blocks of 16 and a remainder
        for (m, n) in [(37, 29), (29, 70), (1, 5), (300, 17)] {
            blas_equals_gemm::<f32>(1e-5, m, n);
            blas_equals_gemm::<f64>(1e-12, m, n);
        }
    }
}
