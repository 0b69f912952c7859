//! 2-D convolution and matrix products over Z_2^64 (digest §6.5, §6.16).
//!
//! Convolutions are PyTorch's `conv2d` on one `[C, H, W]` image with weights
//! `[O, C/groups, kh, kw]`, zero padding, stride, dilation and groups, with every product and
//! sum wrapping modulo 2^64 (no truncation: products of two fixed-point operands carry `2f`
//! fractional bits and the caller truncates).
//!
//! * [`conv2d`] runs `im2col` + the packed GEMM of [`crate::gemm`] per group; depthwise-style
//!   convolutions (one input channel per group) use a direct, vectorised kernel instead.
//! * [`conv2d_sum`] computes `Σ_t conv(x_t, w_t)` in one product by stacking the terms along
//!   the reduction dimension: the Beaver linear layer `conv(X0, F) + conv(E, W0)` of §6.5
//!   costs one GEMM of depth `2K`.
//! * [`conv2d_batch`] applies the same weights to several inputs in one product (the inputs'
//!   columns side by side).
//! * [`conv2d_reference`] is the direct seven-loop definition the fast paths are tested
//!   against.
//!
//! The parts: this file holds the entry points; `params` the geometry ([`Conv2dParams`] and
//! its checks), `im2col` the matrices a product reads without materialising them, and
//! `depthwise` the direct kernel for one input channel per group.

mod depthwise;
mod im2col;
mod params;

#[cfg(test)]
mod tests;

pub use params::Conv2dParams;

use crate::error::{Result, RingError};
use crate::gemm::{self, Dense};
use crate::tensor::RingTensor;
use depthwise::conv_depthwise;
use im2col::{Im2col, StackCols, StackRows};
use params::{Geom, geometry, geometry_of};

/// Direct definition (reference): `y[o, i, j] = Σ x[c, i·s − p + ky·d, j·s − p + kx·d] · w[o, c', ky, kx]`.
pub fn conv2d_reference(x: &RingTensor, w: &RingTensor, p: &Conv2dParams) -> Result<RingTensor> {
    let g = geometry(x, w, p)?;
    let (xd, wdat) = (x.data(), w.data());
    let [kh, kw] = p.kernel;
    let mut out = vec![0u64; g.o * g.pixels()];
    for o in 0..g.o {
        let grp = o / g.og;
        for oy in 0..g.ho {
            for ox in 0..g.wo {
                let mut s = 0u64;
                for ci in 0..g.cg {
                    let c = grp * g.cg + ci;
                    for ky in 0..kh {
                        let iy = (oy * p.stride[0] + ky * p.dilation[0]) as isize
                            - p.padding[0] as isize;
                        if iy < 0 || iy >= g.h as isize {
                            continue;
                        }
                        for kx in 0..kw {
                            let ix = (ox * p.stride[1] + kx * p.dilation[1]) as isize
                                - p.padding[1] as isize;
                            if ix < 0 || ix >= g.w as isize {
                                continue;
                            }
                            let xv = xd[(c * g.h + iy as usize) * g.w + ix as usize];
                            let wv = wdat[((o * g.cg + ci) * kh + ky) * kw + kx];
                            s = s.wrapping_add(xv.wrapping_mul(wv));
                        }
                    }
                }
                out[(o * g.ho + oy) * g.wo + ox] = s;
            }
        }
    }
    RingTensor::from_vec(&[g.o, g.ho, g.wo], out)
}

/// Checks that every term has the geometry of the first and returns it.
fn terms_geometry(terms: &[(&RingTensor, &RingTensor)], p: &Conv2dParams) -> Result<Geom> {
    let Some((x0, w0)) = terms.first() else {
        return Err(RingError::invalid("conv2d_sum", "no terms"));
    };
    let g = geometry(x0, w0, p)?;
    for (x, w) in &terms[1..] {
        if x.dims() != x0.dims() {
            return Err(RingError::ShapeMismatch {
                op: "conv2d_sum",
                left: x0.dims().to_vec(),
                right: x.dims().to_vec(),
            });
        }
        if w.dims() != w0.dims() {
            return Err(RingError::ShapeMismatch {
                op: "conv2d_sum",
                left: w0.dims().to_vec(),
                right: w.dims().to_vec(),
            });
        }
    }
    Ok(g)
}

/// `Σ_t conv2d(x_t, w_t)` in one pass; all inputs share one shape, all weights another.
pub fn conv2d_sum(terms: &[(&RingTensor, &RingTensor)], p: &Conv2dParams) -> Result<RingTensor> {
    let g = terms_geometry(terms, p)?;
    let groups = p.groups;
    if g.cg == 1 && groups > 1 {
        return RingTensor::from_vec(&[g.o, g.ho, g.wo], conv_depthwise(terms, &g));
    }
    let (k, n, t) = (g.k(), g.pixels(), terms.len());
    let mut out = vec![0u64; g.o * n];
    let direct = reads_input_directly(p);
    let mut a = vec![0u64; if t == 1 { 0 } else { g.og * t * k }];
    for grp in 0..groups {
        let c0 = grp * g.cg;
        // A: [og, t·k], row o = [w_1[o] | w_2[o] | ...]; B: the terms' im2col matrices stacked.
        if t > 1 {
            for o in 0..g.og {
                for (ti, (_, w)) in terms.iter().enumerate() {
                    let src = &w.data()[(grp * g.og + o) * k..(grp * g.og + o + 1) * k];
                    a[(o * t + ti) * k..(o * t + ti + 1) * k].copy_from_slice(src);
                }
            }
        }
        let a_ref: &[u64] = if t == 1 {
            &terms[0].1.data()[grp * g.og * k..(grp + 1) * g.og * k]
        } else {
            &a
        };
        let c = &mut out[grp * g.og * n..(grp + 1) * g.og * n];
        if direct {
            let parts = terms.iter().map(|(x, _)| Dense {
                data: &x.data()[c0 * n..(c0 + g.cg) * n],
                rows: k,
                cols: n,
            });
            gemm::gemm_source(g.og, a_ref, &StackRows(parts.collect()), c);
        } else {
            let parts = terms.iter().map(|(x, _)| Im2col::new(x.data(), g, c0));
            gemm::gemm_source(g.og, a_ref, &StackRows(parts.collect()), c);
        }
    }
    RingTensor::from_vec(&[g.o, g.ho, g.wo], out)
}

/// Whether the `im2col` matrix of `p` is the input itself (`1 × 1`, stride 1, no padding).
fn reads_input_directly(p: &Conv2dParams) -> bool {
    p.kernel == [1, 1] && p.stride == [1, 1] && p.padding == [0, 0]
}

/// A convolution's weights prepared once for many inputs (a secure layer's weights, fixed
/// for a session): each group's weights as a [`gemm::PreparedLhs`], so that a product does
/// not make their second operands again. Depthwise convolutions keep the weights as they are.
#[derive(Clone, Debug)]
pub struct PreparedConv {
    params: Conv2dParams,
    w_dims: Vec<usize>,
    /// One per group; empty for a depthwise convolution.
    groups: Vec<gemm::PreparedLhs>,
    /// The weights of a depthwise convolution (one input channel per group).
    depthwise: Option<RingTensor>,
}

impl PreparedConv {
    /// Prepares `w` (`[O, C/groups, kh, kw]`) for convolutions with `p`.
    pub fn new(w: &RingTensor, p: &Conv2dParams) -> Result<Self> {
        let [o, cg, kh, kw] = w.dims()[..] else {
            return Err(RingError::WrongRank {
                op: "conv2d weight",
                expected: 4,
                shape: w.dims().to_vec(),
            });
        };
        if p.groups == 0 || o % p.groups != 0 || [kh, kw] != p.kernel {
            return Err(RingError::invalid(
                "conv2d",
                format!(
                    "weight shape {:?} does not fit groups {}, kernel {:?}",
                    w.dims(),
                    p.groups,
                    p.kernel
                ),
            ));
        }
        let (og, k) = (o / p.groups, cg * kh * kw);
        let depthwise = cg == 1 && p.groups > 1;
        let groups = if depthwise {
            Vec::new()
        } else {
            w.data()
                .chunks_exact(og * k)
                .map(|a| gemm::PreparedLhs::new(og, k, a))
                .collect()
        };
        Ok(Self {
            params: *p,
            w_dims: w.dims().to_vec(),
            groups,
            depthwise: depthwise.then(|| w.clone()),
        })
    }

    /// The convolution's parameters.
    pub fn params(&self) -> &Conv2dParams {
        &self.params
    }

    /// The weights' dimensions.
    pub fn weight_dims(&self) -> &[usize] {
        &self.w_dims
    }

    /// The weights themselves (kept once, inside the prepared operands).
    pub fn weights(&self) -> RingTensor {
        match &self.depthwise {
            Some(w) => w.clone(),
            None => {
                let data = self
                    .groups
                    .iter()
                    .flat_map(|g| g.entries())
                    .copied()
                    .collect();
                RingTensor::from_vec(&self.w_dims, data).expect("prepared weights keep their shape")
            }
        }
    }
}

/// `conv2d(x, w)` with prepared weights: the same result as [`conv2d`].
pub fn conv2d_prepared(x: &RingTensor, w: &PreparedConv) -> Result<RingTensor> {
    let p = &w.params;
    if let Some(dw) = &w.depthwise {
        return conv2d(x, dw, p);
    }
    let g = geometry_of(x, &w.w_dims, p)?;
    let n = g.pixels();
    let mut out = vec![0u64; g.o * n];
    for (grp, (lhs, c)) in w
        .groups
        .iter()
        .zip(out.chunks_exact_mut(g.og * n))
        .enumerate()
    {
        let c0 = grp * g.cg;
        if reads_input_directly(p) {
            let src = Dense {
                data: &x.data()[c0 * n..(c0 + g.cg) * n],
                rows: g.k(),
                cols: n,
            };
            gemm::gemm_prepared(lhs, &src, c);
        } else {
            gemm::gemm_prepared(lhs, &Im2col::new(x.data(), g, c0), c);
        }
    }
    RingTensor::from_vec(&[g.o, g.ho, g.wo], out)
}

/// `conv2d(x, w)` (fast path).
pub fn conv2d(x: &RingTensor, w: &RingTensor, p: &Conv2dParams) -> Result<RingTensor> {
    conv2d_sum(&[(x, w)], p)
}

/// `conv2d(x_i, w)` for every input, sharing one product (inputs of one shape).
pub fn conv2d_batch(
    inputs: &[&RingTensor],
    w: &RingTensor,
    p: &Conv2dParams,
) -> Result<Vec<RingTensor>> {
    let Some(x0) = inputs.first() else {
        return Ok(Vec::new());
    };
    let g = geometry(x0, w, p)?;
    for x in &inputs[1..] {
        if x.dims() != x0.dims() {
            return Err(RingError::ShapeMismatch {
                op: "conv2d_batch",
                left: x0.dims().to_vec(),
                right: x.dims().to_vec(),
            });
        }
    }
    if inputs.len() == 1 || (g.cg == 1 && p.groups > 1) {
        return inputs.iter().map(|x| conv2d(x, w, p)).collect();
    }
    let (k, n, t) = (g.k(), g.pixels(), inputs.len());
    let mut outs = vec![vec![0u64; g.o * n]; t];
    let mut c = vec![0u64; g.og * t * n];
    for grp in 0..p.groups {
        c.fill(0);
        let a = &w.data()[grp * g.og * k..(grp + 1) * g.og * k];
        let parts = inputs.iter().map(|x| Im2col::new(x.data(), g, grp * g.cg));
        gemm::gemm_source(g.og, a, &StackCols(parts.collect()), &mut c);
        for (ti, out) in outs.iter_mut().enumerate() {
            for o in 0..g.og {
                out[(grp * g.og + o) * n..(grp * g.og + o + 1) * n]
                    .copy_from_slice(&c[o * t * n + ti * n..o * t * n + (ti + 1) * n]);
            }
        }
    }
    outs.into_iter()
        .map(|d| RingTensor::from_vec(&[g.o, g.ho, g.wo], d))
        .collect()
}

impl RingTensor {
    /// Matrix product `self [m, k] · other [k, n]` over Z_2^64.
    pub fn matmul(&self, other: &RingTensor) -> Result<RingTensor> {
        let ([m, k], [k2, n]) = (self.dims(), other.dims()) else {
            return Err(RingError::invalid(
                "matmul",
                format!(
                    "expected two matrices, got {:?} and {:?}",
                    self.dims(),
                    other.dims()
                ),
            ));
        };
        if k != k2 {
            return Err(RingError::ShapeMismatch {
                op: "matmul",
                left: self.dims().to_vec(),
                right: other.dims().to_vec(),
            });
        }
        let mut c = vec![0u64; m * n];
        gemm::gemm(*m, *k, *n, self.data(), other.data(), &mut c);
        RingTensor::from_vec(&[*m, *n], c)
    }
}

/// A fully connected layer `y = W · x` with `W: [out, in]` and `x` any tensor of `in` elements
/// (e.g. `[C, 1, 1]`); returns `[out, 1, 1]`.
pub fn linear(x: &RingTensor, w: &RingTensor) -> Result<RingTensor> {
    let [o, i] = w.dims()[..] else {
        return Err(RingError::WrongRank {
            op: "linear weight",
            expected: 2,
            shape: w.dims().to_vec(),
        });
    };
    if x.len() != i {
        return Err(RingError::invalid(
            "linear",
            format!(
                "input has {} elements, weight {:?} needs {i}",
                x.len(),
                w.dims()
            ),
        ));
    }
    let mut y = vec![0u64; o];
    gemm::gemm(o, i, 1, w.data(), x.data(), &mut y);
    RingTensor::from_vec(&[o, 1, 1], y)
}
