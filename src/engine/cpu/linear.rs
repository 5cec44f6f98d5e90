//! The one-node linear layer of the CPU: `x Wᵀ + b` and its backward as two custom ops.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::float::{Elem, dispatch};
use super::gemm::{linear, mm, parallelism, rm, weight_grad};
use super::rows::col_sums;

/// `x Wᵀ + b` for rows x (R, in), W (out, in), b (out) as one node: the product and the bias in
/// one `gemm` (the output starts as the bias rows), and a backward that writes `dW` in W's own
/// layout (candle's transposed-weight view costs a zeroed buffer and a strided add per step).
struct LinearOp;

fn linear_bwd<T: Elem>(x: &[T], w: &[T], g: &[T], inp: usize) -> Vec<T> {
    let out = w.len() / inp;
    let rows = x.len() / inp;
    let mut r = vec![T::zero(); x.len() + w.len() + out];
    let (dx, rest) = r.split_at_mut(x.len());
    let (dw, db) = rest.split_at_mut(w.len());
    mm(
        rows,
        inp,
        out,
        dx,
        false,
        rm(g, out),
        rm(w, inp),
        parallelism(),
    );
    weight_grad(dw, g, x, out, inp);
    db.copy_from_slice(&col_sums(g, out));
    r
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        let (rows, inp) = l1.shape().dims2()?;
        let (out, win) = l2.shape().dims2()?;
        if win != inp || l3.shape().dims() != [out] {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?} do not fit",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let y = dispatch(
            "linear",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |v| linear(v[0], v[1], v[2], inp),
            |v| linear(v[0], v[1], v[2], inp),
        )?;
        Ok((y, Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LinearGrad)?;
        let (nx, nw) = (x.elem_count(), w.elem_count());
        Ok((
            Some(packed.narrow(0, 0, nx)?.reshape(x.shape())?),
            Some(packed.narrow(0, nx, nw)?.reshape(w.shape())?),
            Some(packed.narrow(0, nx + nw, b.elem_count())?),
        ))
    }
}

/// (x, W, dy) → [dx, dW, db], packed.
struct LinearGrad;

impl CustomOp3 for LinearGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad"
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
        let (_, inp) = l1.shape().dims2()?;
        let out = dispatch(
            "linear backward",
            &[(s1, l1), (s2, l2), (s3, l3)],
            |v| linear_bwd(v[0], v[1], v[2], inp),
            |v| linear_bwd(v[0], v[1], v[2], inp),
        )?;
        let (o, _) = l2.shape().dims2()?;
        let n = l1.shape().elem_count() + l2.shape().elem_count() + o;
        Ok((out, Shape::from(n)))
    }
}

/// `x Wᵀ + b` for rows x (R, in) as one node on the CPU (f32/f64); `None` elsewhere, for the
/// caller's op-built path.
pub fn linear_rows(x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let ok = super::enabled()
        && [x, w, b]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == x.dtype())
        && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64);
    if !ok {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        LinearOp,
    )?))
}
