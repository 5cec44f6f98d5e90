//! Long convolutions through real FFTs (CPU, f32/f64): the kernels of the FFT path of
//! `engine::conv` and of the fused BiGS layer and DiffuSSM block. Every sum runs in a fixed
//! order, so results are bitwise reproducible across runs and thread counts.

use std::sync::Arc;

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealToComplex};

use super::float::Elem;

/// Forward and inverse real FFT plans of length `n` (the planner caches them).
struct Plans<T: Elem> {
    fwd: Arc<dyn RealToComplex<T>>,
    inv: Arc<dyn ComplexToReal<T>>,
    l: usize,
}

impl<T: Elem> Plans<T> {
    fn new(l: usize) -> Self {
        let mut p = T::planner().lock().unwrap_or_else(|e| e.into_inner());
        Self {
            fwd: p.plan_fft_forward(2 * l),
            inv: p.plan_fft_inverse(2 * l),
            l,
        }
    }

    fn bins(&self) -> usize {
        self.l + 1
    }

    fn scratch(&self) -> Scratch<T> {
        Scratch {
            time: self.fwd.make_input_vec(),
            freq: self.fwd.make_output_vec(),
            sf: self.fwd.make_scratch_vec(),
            si: self.inv.make_scratch_vec(),
        }
    }

    /// Spectrum of one zero-padded row into `s.freq`.
    #[allow(
        clippy::expect_used,
        clippy::unwrap_used,
        reason = "buffers come from the plans' own make_*_vec, so lengths always match"
    )]
    fn forward(&self, row: &[T], s: &mut Scratch<T>) {
        s.time[..self.l].copy_from_slice(row);
        s.time[self.l..].fill(T::zero());
        self.fwd
            .process_with_scratch(&mut s.time, &mut s.freq, &mut s.sf)
            .expect("realfft forward: buffer sizes come from the plan");
    }

    /// Inverse of `s.freq`, first L samples scaled by 1/(2L) into `out`.
    #[allow(
        clippy::expect_used,
        reason = "buffers come from the plan's own make_*_vec, and 1/(2L) is a float"
    )]
    fn inverse_into(&self, s: &mut Scratch<T>, out: &mut [T]) {
        // Spectra of real signals: DC and Nyquist bins are real. Products keep them real up to
        // rounding; realfft insists on exact zeros.
        let last = s.freq.len() - 1;
        s.freq[0].im = T::zero();
        s.freq[last].im = T::zero();
        self.inv
            .process_with_scratch(&mut s.freq, &mut s.time, &mut s.si)
            .expect("realfft inverse: buffer sizes come from the plan");
        let scale = <T as realfft::num_traits::FromPrimitive>::from_f64(1.0 / (2 * self.l) as f64)
            .expect("float");
        for (o, v) in out.iter_mut().zip(&s.time[..self.l]) {
            *o = *v * scale;
        }
    }

    /// Spectra of every row of `x` (rows × L), (rows × (L+1)).
    fn spectra(&self, x: &[T]) -> Vec<Complex<T>> {
        let nf = self.bins();
        let rows = x.len() / self.l;
        let mut out = vec![Complex::new(T::zero(), T::zero()); rows * nf];
        out.par_chunks_mut(nf)
            .zip(x.par_chunks(self.l))
            .for_each_init(
                || self.scratch(),
                |s, (o, row)| {
                    self.forward(row, s);
                    o.copy_from_slice(&s.freq);
                },
            );
        out
    }

    /// For each row r of `x` (rows × L): out_r = IFFT(FFT(x_r) · spec_{r's kernel row}).
    fn filter_rows(
        &self,
        x: &[T],
        spec: &[Complex<T>],
        channels: usize,
        kernel_rows: usize,
    ) -> Vec<T> {
        let (l, nf) = (self.l, self.bins());
        let mut out = vec![T::zero(); x.len()];
        out.par_chunks_mut(l)
            .zip(x.par_chunks(l))
            .enumerate()
            .for_each_init(
                || self.scratch(),
                |s, (r, (o, row))| {
                    let kr = if kernel_rows == 1 { 0 } else { r % channels };
                    let ks = &spec[kr * nf..(kr + 1) * nf];
                    self.forward(row, s);
                    for (f, kv) in s.freq.iter_mut().zip(ks) {
                        *f *= *kv;
                    }
                    self.inverse_into(s, o);
                },
            );
        out
    }
}

struct Scratch<T> {
    time: Vec<T>,
    freq: Vec<Complex<T>>,
    sf: Vec<Complex<T>>,
    si: Vec<Complex<T>>,
}

pub(crate) fn conv_fwd<T: Elem>(u: &[T], k: &[T], c: usize, ck: usize, l: usize) -> Vec<T> {
    let plans = Plans::<T>::new(l);
    let kspec = plans.spectra(k);
    plans.filter_rows(u, &kspec, c, ck)
}

/// Both gradients in one pass, sharing each row's spectra:
/// du[b,c,s] = Σ_{t≥s} k[c,t−s]·dy[b,c,t] and dk[c,j] = Σ_b Σ_{t≥j} u[b,c,t−j]·dy[b,c,t]
/// (summed over channels too for a shared kernel). Returns `du` followed by `dk`, flat.
/// Every sum runs in a fixed order, so results are bitwise reproducible across runs.
pub(crate) fn conv_grad<T: Elem>(
    u: &[T],
    k: &[T],
    dy: &[T],
    c: usize,
    ck: usize,
    l: usize,
) -> Vec<T> {
    let plans = Plans::<T>::new(l);
    let nf = plans.bins();
    let zero = Complex::new(T::zero(), T::zero());
    let kspec = plans.spectra(k);
    let rows = u.len() / l;
    // Rows are processed in groups whose kernel-gradient spectra are summed in row order: one
    // group per channel for per-channel kernels, fixed-size row blocks for a shared kernel. The
    // grouping does not depend on the thread count, so sums are bitwise reproducible.
    let groups: Vec<Vec<usize>> = if ck == 1 {
        let per = rows.div_ceil(64).max(1);
        (0..rows)
            .collect::<Vec<_>>()
            .chunks(per)
            .map(|g| g.to_vec())
            .collect()
    } else {
        (0..c).map(|ch| (ch..rows).step_by(c).collect()).collect()
    };
    let partial: Vec<(Vec<T>, Vec<Complex<T>>)> = groups
        .par_iter()
        .map(|g| {
            let mut s = plans.scratch();
            let mut dys = vec![zero; nf];
            let mut acc = vec![zero; nf];
            let mut du = vec![T::zero(); g.len() * l];
            for (&r, du_r) in g.iter().zip(du.chunks_mut(l)) {
                plans.forward(&dy[r * l..(r + 1) * l], &mut s);
                dys.copy_from_slice(&s.freq);
                plans.forward(&u[r * l..(r + 1) * l], &mut s);
                for ((a, uf), df) in acc.iter_mut().zip(&s.freq).zip(&dys) {
                    *a += uf.conj() * *df;
                }
                let kr = if ck == 1 { 0 } else { r % c };
                for (f, (kv, df)) in s.freq.iter_mut().zip(kspec[kr * nf..].iter().zip(&dys)) {
                    *f = kv.conj() * *df;
                }
                plans.inverse_into(&mut s, du_r);
            }
            (du, acc)
        })
        .collect();
    let mut out = vec![T::zero(); rows * l + ck * l];
    let (du, dk) = out.split_at_mut(rows * l);
    for (g, (gdu, _)) in groups.iter().zip(&partial) {
        for (&r, src) in g.iter().zip(gdu.chunks(l)) {
            du[r * l..(r + 1) * l].copy_from_slice(src);
        }
    }
    let spectra: Vec<Vec<Complex<T>>> = if ck == 1 {
        let mut total = vec![zero; nf];
        for (_, acc) in &partial {
            for (t, a) in total.iter_mut().zip(acc) {
                *t += *a;
            }
        }
        vec![total]
    } else {
        partial.into_iter().map(|(_, acc)| acc).collect()
    };
    dk.par_chunks_mut(l).zip(spectra.par_iter()).for_each_init(
        || plans.scratch(),
        |s, (o, a)| {
            s.freq.copy_from_slice(a);
            plans.inverse_into(s, o);
        },
    );
    out
}
