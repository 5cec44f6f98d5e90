//! The candle glue of a fused CPU node with a hand-written backward: a forward that keeps the
//! activations its backward needs, and a backward op that consumes them. The BiGS layer
//! ([`super::bigs_fused`]) and the DiffuSSM block ([`super::diffussm_fused`]) supply only their
//! kernels ([`FusedKernels`]); the f32/f64 dispatch, the hand-over of the saved activations and
//! the packing of the three input gradients live here once.

use std::any::Any;
use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::float::{Elem, cpu_slice};

/// The kernels of a fused node over three inputs (x, parameters, extras) with the output shaped
/// like x.
pub(crate) trait FusedKernels: Clone + Send + Sync + 'static {
    /// What error messages call the node ("fused BiGS layer").
    const WHAT: &'static str;
    /// candle's names of the forward and backward ops.
    const OP: &'static str;
    const GRAD_OP: &'static str;
    /// The activations the forward keeps for the backward.
    type Saved<T: Send + 'static>: Send + 'static;

    /// Checks the three input layouts against the node's shapes.
    fn check(&self, x: &Layout, p: &Layout, e: &Layout) -> candle_core::Result<()>;

    /// The output (shaped like x) and the saved activations.
    fn forward<T: Elem>(&self, x: &[T], p: &[T], e: &[T]) -> (Vec<T>, Self::Saved<T>);

    /// [dx, dp, de], packed, from the saved activations and the output gradient `g`.
    fn backward<T: Elem>(&self, s: &Self::Saved<T>, x: &[T], p: &[T], g: &[T]) -> Vec<T>;
}

/// The forward op; one instance per call (it holds that call's activations).
pub(crate) struct FusedNode<K: FusedKernels> {
    kernels: K,
    saved: Mutex<Option<Box<dyn Any + Send>>>,
}

impl<K: FusedKernels> FusedNode<K> {
    pub(crate) fn new(kernels: K) -> Self {
        Self {
            kernels,
            saved: Mutex::new(None),
        }
    }
}

fn take(saved: &Mutex<Option<Box<dyn Any + Send>>>) -> Option<Box<dyn Any + Send>> {
    saved.lock().unwrap_or_else(|e| e.into_inner()).take()
}

impl<K: FusedKernels> CustomOp3 for FusedNode<K> {
    fn name(&self) -> &'static str {
        K::OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        self.kernels.check(l1, l2, l3)?;
        let what = K::WHAT;
        let (out, saved): (CpuStorage, Box<dyn Any + Send>) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(e)) => {
                let (y, s) = self.kernels.forward(
                    cpu_slice(x, l1, what)?,
                    cpu_slice(p, l2, what)?,
                    cpu_slice(e, l3, what)?,
                );
                (CpuStorage::F32(y), Box::new(s))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(e)) => {
                let (y, s) = self.kernels.forward(
                    cpu_slice(x, l1, what)?,
                    cpu_slice(p, l2, what)?,
                    cpu_slice(e, l3, what)?,
                );
                (CpuStorage::F64(y), Box::new(s))
            }
            _ => candle_core::bail!("{what}: f32 or f64 operands of one dtype"),
        };
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        e: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = take(&self.saved).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: backward ran twice through one forward",
                K::WHAT
            ))
        })?;
        let (nx, np, ne) = (x.elem_count(), p.elem_count(), e.elem_count());
        let op = FusedGrad {
            kernels: self.kernels.clone(),
            saved: Mutex::new(Some(saved)),
            len: nx + np + ne,
        };
        let packed = x.apply_op3_no_bwd(p, &grad.contiguous()?, &op)?;
        Ok((
            Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
            Some(packed.narrow(0, nx, np)?.reshape(p.shape())?),
            Some(packed.narrow(0, nx + np, ne)?.reshape(e.shape())?),
        ))
    }
}

/// (x, params, dy) → [dx, dparams, dextras] of `len` elements, with the forward's activations.
struct FusedGrad<K: FusedKernels> {
    kernels: K,
    saved: Mutex<Option<Box<dyn Any + Send>>>,
    len: usize,
}

impl<K: FusedKernels> CustomOp3 for FusedGrad<K> {
    fn name(&self) -> &'static str {
        K::GRAD_OP
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let _time = super::prof::span(self.name());
        let what = K::GRAD_OP;
        let saved = take(&self.saved)
            .ok_or_else(|| candle_core::Error::Msg(format!("{what}: no saved activations")))?;
        let dtype_changed = || candle_core::Error::Msg(format!("{what}: dtype changed"));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(p), CpuStorage::F32(g)) => {
                let s = saved
                    .downcast::<K::Saved<f32>>()
                    .map_err(|_| dtype_changed())?;
                CpuStorage::F32(self.kernels.backward(
                    &s,
                    cpu_slice(x, l1, what)?,
                    cpu_slice(p, l2, what)?,
                    cpu_slice(g, l3, what)?,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(p), CpuStorage::F64(g)) => {
                let s = saved
                    .downcast::<K::Saved<f64>>()
                    .map_err(|_| dtype_changed())?;
                CpuStorage::F64(self.kernels.backward(
                    &s,
                    cpu_slice(x, l1, what)?,
                    cpu_slice(p, l2, what)?,
                    cpu_slice(g, l3, what)?,
                ))
            }
            _ => candle_core::bail!("{what}: f32 or f64 operands of one dtype"),
        };
        Ok((out, Shape::from(self.len)))
    }
}
