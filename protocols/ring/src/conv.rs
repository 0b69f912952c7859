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

use crate::error::{Result, RingError};
use crate::gemm::{self, Dense, PanelSource};
use crate::tensor::RingTensor;
use rayon::prelude::*;

/// Geometry of a convolution (or a pooling window): kernel, stride, zero padding, dilation,
/// groups, each `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
    pub groups: usize,
}

impl Conv2dParams {
    /// A `kh × kw` kernel with stride 1, no padding, dilation 1, one group.
    pub fn new(kernel: [usize; 2]) -> Self {
        Conv2dParams {
            kernel,
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }

    /// Sets the stride.
    pub fn stride(mut self, stride: [usize; 2]) -> Self {
        self.stride = stride;
        self
    }

    /// Sets the zero padding.
    pub fn padding(mut self, padding: [usize; 2]) -> Self {
        self.padding = padding;
        self
    }

    /// Sets the dilation.
    pub fn dilation(mut self, dilation: [usize; 2]) -> Self {
        self.dilation = dilation;
        self
    }

    /// Sets the number of groups.
    pub fn groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }

    /// From the `u32` fields of [`knapsec_core::graph::Op::Conv2d`].
    pub fn from_graph(
        kernel: [u32; 2],
        stride: [u32; 2],
        padding: [u32; 2],
        dilation: [u32; 2],
        groups: u32,
    ) -> Self {
        let u = |a: [u32; 2]| [a[0] as usize, a[1] as usize];
        Conv2dParams {
            kernel: u(kernel),
            stride: u(stride),
            padding: u(padding),
            dilation: u(dilation),
            groups: groups as usize,
        }
    }

    /// Output height and width on an `h × w` input, or an error if the window does not fit.
    pub fn output_hw(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let op = "conv2d";
        if self.stride.contains(&0) || self.dilation.contains(&0) || self.kernel.contains(&0) {
            return Err(RingError::invalid(
                op,
                format!("kernel, stride and dilation must be ≥ 1 ({self:?})"),
            ));
        }
        let dim = |n: usize, i: usize| -> Result<usize> {
            let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
            let padded = n + 2 * self.padding[i];
            if span > padded {
                return Err(RingError::invalid(
                    op,
                    format!("kernel span {span} exceeds the padded input size {padded} ({self:?})"),
                ));
            }
            Ok((padded - span) / self.stride[i] + 1)
        };
        Ok((dim(h, 0)?, dim(w, 1)?))
    }
}

/// Checked geometry of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geom {
    h: usize,
    w: usize,
    o: usize,
    ho: usize,
    wo: usize,
    /// Input channels per group.
    cg: usize,
    /// Output channels per group.
    og: usize,
    p: Conv2dParams,
}

impl Geom {
    fn k(&self) -> usize {
        self.cg * self.p.kernel[0] * self.p.kernel[1]
    }
    fn pixels(&self) -> usize {
        self.ho * self.wo
    }
}

fn geometry(x: &RingTensor, w: &RingTensor, p: &Conv2dParams) -> Result<Geom> {
    geometry_of(x, w.dims(), p)
}

/// [`geometry`] from the weights' dimensions.
fn geometry_of(x: &RingTensor, w_dims: &[usize], p: &Conv2dParams) -> Result<Geom> {
    let (c, h, wd) = x.chw()?;
    let [o, cg, kh, kw] = w_dims[..] else {
        return Err(RingError::WrongRank {
            op: "conv2d weight",
            expected: 4,
            shape: w_dims.to_vec(),
        });
    };
    let g = p.groups;
    if g == 0 || c % g != 0 || o % g != 0 {
        return Err(RingError::invalid(
            "conv2d",
            format!("groups {g} must divide the input channels {c} and the output channels {o}"),
        ));
    }
    if cg != c / g || [kh, kw] != p.kernel {
        return Err(RingError::invalid(
            "conv2d",
            format!(
                "weight shape {:?} does not fit input channels {c}, groups {g}, kernel {:?}",
                w_dims, p.kernel
            ),
        ));
    }
    let (ho, wo) = p.output_hw(h, wd)?;
    Ok(Geom {
        h,
        w: wd,
        o,
        ho,
        wo,
        cg,
        og: o / g,
        p: *p,
    })
}

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

/// Range of output positions `o` whose input index `o·s + off − pad` lies in `0..n`.
fn valid_range(n: usize, n_out: usize, stride: usize, off: usize, pad: usize) -> (usize, usize) {
    // o·s + off ≥ pad  and  o·s + off − pad ≤ n − 1
    let lo = if off >= pad {
        0
    } else {
        (pad - off).div_ceil(stride)
    };
    let hi = if n + pad < off + 1 {
        0
    } else {
        ((n + pad - off - 1) / stride + 1).min(n_out)
    };
    (lo.min(hi), hi)
}

/// One tap `(ky, kx)` of the kernel, as `im2col` reads it: output pixel `(oy, ox)` reads
/// input pixel `(oy·s + dy, ox·s + dx)`, which lies inside the image for output columns
/// `xlo .. xhi` (found once per tap, not once per output row).
#[derive(Clone, Copy, Debug)]
struct Tap {
    dy: isize,
    dx: isize,
    xlo: usize,
    xhi: usize,
}

/// The `im2col` matrix of input channels `c0 .. c0 + g.cg` of one image, read in segments
/// while it is packed: rows are `(channel, ky, kx)`, columns `(oy, ox)`.
struct Im2col<'a> {
    x: &'a [u64],
    g: Geom,
    c0: usize,
    /// The kernel's taps in row order (`ky`, then `kx`).
    taps: Vec<Tap>,
}

impl<'a> Im2col<'a> {
    fn new(x: &'a [u64], g: Geom, c0: usize) -> Self {
        let [kh, kw] = g.p.kernel;
        let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
        let taps = (0..kh * kw)
            .map(|t| {
                let (ky, kx) = (t / kw, t % kw);
                let (xlo, xhi) = valid_range(g.w, g.wo, s[1], kx * d[1], pad[1]);
                Tap {
                    dy: (ky * d[0]) as isize - pad[0] as isize,
                    dx: (kx * d[1]) as isize - pad[1] as isize,
                    xlo,
                    xhi,
                }
            })
            .collect();
        Self { x, g, c0, taps }
    }
}

impl PanelSource for Im2col<'_> {
    fn rows(&self) -> usize {
        self.g.k()
    }
    fn cols(&self) -> usize {
        self.g.pixels()
    }
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]) {
        let g = &self.g;
        let [sy, sx] = g.p.stride;
        let ci = row / self.taps.len();
        let tap = self.taps[row - ci * self.taps.len()];
        let plane = &self.x[(self.c0 + ci) * g.h * g.w..(self.c0 + ci + 1) * g.h * g.w];
        let mut oy = col0 / g.wo;
        let mut ox = col0 - oy * g.wo;
        let mut t = 0;
        while t < dst.len() {
            // One output row at a time: columns ox .. wo of output row oy.
            let run = (g.wo - ox).min(dst.len() - t);
            let out = &mut dst[t..t + run];
            let iy = (oy * sy) as isize + tap.dy;
            if iy < 0 || iy >= g.h as isize {
                out.fill(0);
            } else {
                let xrow = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                // Output columns xlo..xhi read in-bounds pixels; the rest are padding.
                let lo = tap.xlo.clamp(ox, ox + run) - ox;
                let hi = (tap.xhi.clamp(ox, ox + run) - ox).max(lo);
                out[..lo].fill(0);
                out[hi..].fill(0);
                if lo < hi {
                    let base = ((ox + lo) * sx) as isize + tap.dx;
                    let src = &xrow[base as usize..];
                    if sx == 1 {
                        out[lo..hi].copy_from_slice(&src[..hi - lo]);
                    } else {
                        for (v, &x) in out[lo..hi].iter_mut().zip(src.iter().step_by(sx)) {
                            *v = x;
                        }
                    }
                }
            }
            t += run;
            ox = 0;
            oy += 1;
        }
    }
}

/// Sources stacked on top of each other (the terms of a sum of products: `[B_1; B_2; ...]`).
struct StackRows<S>(Vec<S>);

impl<S: PanelSource> PanelSource for StackRows<S> {
    fn rows(&self) -> usize {
        self.0.iter().map(|s| s.rows()).sum()
    }
    fn cols(&self) -> usize {
        self.0[0].cols()
    }
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]) {
        if let [only] = &self.0[..] {
            return only.segment(row, col0, dst);
        }
        let each = self.0[0].rows();
        self.0[row / each].segment(row % each, col0, dst)
    }
}

/// Sources side by side (several inputs under the same weights: `[B_1 | B_2 | ...]`).
struct StackCols<S>(Vec<S>);

impl<S: PanelSource> PanelSource for StackCols<S> {
    fn rows(&self) -> usize {
        self.0[0].rows()
    }
    fn cols(&self) -> usize {
        self.0.iter().map(|s| s.cols()).sum()
    }
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]) {
        let each = self.0[0].cols();
        let mut t = 0;
        while t < dst.len() {
            let col = col0 + t;
            let run = (each - col % each).min(dst.len() - t);
            self.0[col / each].segment(row, col % each, &mut dst[t..t + run]);
            t += run;
        }
    }
}

/// Direct kernel for one input channel per group (depthwise and its channel multipliers):
/// `out[o] = Σ_t conv(x_t[o / og], w_t[o])`.
fn conv_depthwise(terms: &[(&RingTensor, &RingTensor)], g: &Geom) -> Vec<u64> {
    let (ho, wo) = (g.ho, g.wo);
    let mut out = vec![0u64; g.o * ho * wo];
    let avx512 = crate::gemm::kernel_level().has_avx512();
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(o, oplane)| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: AVX-512 F/DQ were detected by `kernel_level`.
                return unsafe { dw_plane_avx512(terms, g, o, oplane) };
            }
            let _ = avx512;
            dw_plane(terms, g, o, oplane)
        });
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn dw_plane_avx512(terms: &[(&RingTensor, &RingTensor)], g: &Geom, o: usize, oplane: &mut [u64]) {
    dw_plane(terms, g, o, oplane)
}

/// Output channel `o` of a depthwise convolution (see [`conv_depthwise`]).
#[inline(always)]
fn dw_plane(terms: &[(&RingTensor, &RingTensor)], g: &Geom, o: usize, oplane: &mut [u64]) {
    let [kh, kw] = g.p.kernel;
    let (s, d, pad) = (g.p.stride, g.p.dilation, g.p.padding);
    let (h, w, ho, wo) = (g.h, g.w, g.ho, g.wo);
    let c = o / g.og;
    for (x, wt) in terms {
        let plane = &x.data()[c * h * w..(c + 1) * h * w];
        let wk = &wt.data()[o * kh * kw..(o + 1) * kh * kw];
        for ky in 0..kh {
            let (ylo, yhi) = valid_range(h, ho, s[0], ky * d[0], pad[0]);
            for kx in 0..kw {
                let wv = wk[ky * kw + kx];
                let (xlo, xhi) = valid_range(w, wo, s[1], kx * d[1], pad[1]);
                if xlo >= xhi {
                    continue;
                }
                for oy in ylo..yhi {
                    let iy = oy * s[0] + ky * d[0] - pad[0];
                    let xrow = &plane[iy * w..(iy + 1) * w];
                    let orow = &mut oplane[oy * wo + xlo..oy * wo + xhi];
                    let base = xlo * s[1] + kx * d[1] - pad[1];
                    if s[1] == 1 {
                        for (ov, &xv) in orow.iter_mut().zip(&xrow[base..base + (xhi - xlo)]) {
                            *ov = ov.wrapping_add(wv.wrapping_mul(xv));
                        }
                    } else {
                        for (k, ov) in orow.iter_mut().enumerate() {
                            *ov = ov.wrapping_add(wv.wrapping_mul(xrow[base + k * s[1]]));
                        }
                    }
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rand_tensor(dims: &[usize], seed: u64) -> RingTensor {
        let mut s = seed | 1;
        let n: usize = dims.iter().product();
        let data = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s ^ (s >> 31)
            })
            .collect();
        RingTensor::from_vec(dims, data).unwrap()
    }

    #[test]
    fn hand_computed_3x3() {
        // 1 channel 3×3 input 1..9, a 2×2 kernel of ones, padding 0: window sums.
        let x = RingTensor::from_vec(&[1, 3, 3], (1..=9).collect()).unwrap();
        let w = RingTensor::filled(&[1, 1, 2, 2], 1);
        let y = conv2d(&x, &w, &Conv2dParams::new([2, 2])).unwrap();
        assert_eq!(y.dims(), &[1, 2, 2]);
        assert_eq!(y.data(), &[12, 16, 24, 28]);
        // Negative weights wrap: −1 · sums.
        let y = conv2d(
            &x,
            &w.neg(),
            &Conv2dParams::new([2, 2]).padding([1, 1]).stride([2, 2]),
        )
        .unwrap();
        assert_eq!(y.dims(), &[1, 2, 2]);
        assert_eq!(y.to_i64(), vec![-1, -5, -11, -28]);
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let x = RingTensor::zeros(&[4, 5, 5]);
        let w = RingTensor::zeros(&[8, 2, 3, 3]);
        assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3])).is_err()); // groups 1 needs [8, 4, 3, 3]
        assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(2)).is_ok());
        assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(3)).is_err());
        assert!(conv2d(&x, &w, &Conv2dParams::new([3, 3]).groups(2).stride([0, 1])).is_err());
        let big = RingTensor::zeros(&[8, 2, 7, 7]);
        assert!(conv2d(&x, &big, &Conv2dParams::new([7, 7]).groups(2)).is_err());
        assert!(conv2d(&RingTensor::zeros(&[4, 5]), &w, &Conv2dParams::new([3, 3])).is_err());
    }

    #[test]
    fn linear_and_matmul() {
        let w = RingTensor::from_i64(&[2, 3], &[1, -2, 3, 0, 1, -1]).unwrap();
        let x = RingTensor::from_i64(&[3, 1, 1], &[4, 5, 6]).unwrap();
        assert_eq!(linear(&x, &w).unwrap().to_i64(), vec![12, -1]);
        let m = w.matmul(&x.clone().reshape(&[3, 1]).unwrap()).unwrap();
        assert_eq!(m.to_i64(), vec![12, -1]);
        assert!(w.matmul(&w).is_err());
        assert!(linear(&RingTensor::zeros(&[2, 1, 1]), &w).is_err());
    }

    #[test]
    fn resnet_like_layer_matches_reference() {
        let x = rand_tensor(&[16, 12, 12], 1);
        let w = rand_tensor(&[32, 16, 3, 3], 2);
        let p = Conv2dParams::new([3, 3]).padding([1, 1]);
        assert_eq!(
            conv2d(&x, &w, &p).unwrap(),
            conv2d_reference(&x, &w, &p).unwrap()
        );
        let p = p.stride([2, 2]);
        assert_eq!(
            conv2d(&x, &w, &p).unwrap(),
            conv2d_reference(&x, &w, &p).unwrap()
        );
    }

    /// Signed weights of at most `bits` bits (plaintext fixed-point weights are small).
    fn small_tensor(dims: &[usize], seed: u64, bits: u32) -> RingTensor {
        let mut t = rand_tensor(dims, seed);
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = ((*v as i64) >> (64 - bits)) as u64);
        t
    }

    #[test]
    fn prepared_weights_give_the_same_convolutions() {
        // Layer shapes on both paths of the product (tasks packing their own columns; B
        // packed whole for few columns), random and small weights (the two IFMA kernels),
        // grouped, depthwise and 1×1 convolutions.
        let cases = [
            (16, 32, 12, 3, 1, 1),
            (16, 32, 12, 3, 2, 1),
            (64, 64, 4, 3, 1, 1),
            (32, 32, 2, 3, 1, 1),
            (16, 16, 9, 1, 1, 1),
            (16, 32, 9, 3, 1, 4),
            (12, 12, 9, 3, 1, 12),
        ];
        for (seed, (c, o, h, k, s, g)) in cases.into_iter().enumerate() {
            let seed = seed as u64;
            let p = Conv2dParams::new([k, k])
                .stride([s, s])
                .padding([k / 2, k / 2])
                .groups(g);
            let x = rand_tensor(&[c, h, h], seed);
            for w in [
                rand_tensor(&[o, c / g, k, k], seed ^ 9),
                small_tensor(&[o, c / g, k, k], seed ^ 9, 20),
                small_tensor(&[o, c / g, k, k], seed ^ 9, 40),
            ] {
                let prepared = PreparedConv::new(&w, &p).unwrap();
                assert_eq!(prepared.weights(), w);
                assert_eq!(
                    conv2d_prepared(&x, &prepared).unwrap(),
                    conv2d_reference(&x, &w, &p).unwrap(),
                    "{c}→{o} {h}×{h} k{k} s{s} g{g}"
                );
            }
        }
        // Weights for another input, or of another rank, are errors.
        let w = rand_tensor(&[8, 4, 3, 3], 1);
        let prepared = PreparedConv::new(&w, &Conv2dParams::new([3, 3])).unwrap();
        assert!(conv2d_prepared(&rand_tensor(&[5, 6, 6], 2), &prepared).is_err());
        assert!(
            PreparedConv::new(&rand_tensor(&[8, 4, 3], 1), &Conv2dParams::new([3, 3])).is_err()
        );
        assert!(PreparedConv::new(&w, &Conv2dParams::new([3, 3]).groups(3)).is_err());
    }

    fn arb_case() -> impl Strategy<Value = (usize, usize, usize, usize, usize, Conv2dParams, u64)> {
        (
            1usize..4,  // groups
            1usize..4,  // input channels per group
            1usize..4,  // output channels per group
            1usize..10, // h
            1usize..10, // w
            (
                1usize..4,
                1usize..4,
                1usize..3,
                1usize..3,
                0usize..3,
                0usize..3,
                1usize..3,
                1usize..3,
            ),
            any::<u64>(),
        )
            .prop_map(
                |(g, cg, og, h, w, (kh, kw, sh, sw, ph, pw, dh, dw), seed)| {
                    let p = Conv2dParams::new([kh, kw])
                        .stride([sh, sw])
                        .padding([ph, pw])
                        .dilation([dh, dw])
                        .groups(g);
                    (g, cg, og, h, w, p, seed)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        #[test]
        fn fast_matches_reference((g, cg, og, h, w, p, seed) in arb_case()) {
            let x = rand_tensor(&[g * cg, h, w], seed);
            let wt = rand_tensor(&[g * og, cg, p.kernel[0], p.kernel[1]], seed ^ 1);
            let want = conv2d_reference(&x, &wt, &p);
            prop_assert_eq!(conv2d(&x, &wt, &p), want.clone());
            if let Ok(want) = want {
                let x2 = rand_tensor(&[g * cg, h, w], seed ^ 2);
                let w2 = rand_tensor(&[g * og, cg, p.kernel[0], p.kernel[1]], seed ^ 3);
                let want2 = conv2d_reference(&x2, &w2, &p).unwrap();
                let sum = conv2d_sum(&[(&x, &wt), (&x2, &w2)], &p).unwrap();
                prop_assert_eq!(sum, want.add(&want2).unwrap());
                let both = conv2d_batch(&[&x, &x2], &wt, &p).unwrap();
                prop_assert_eq!(&both[0], &want);
                prop_assert_eq!(both[1].clone(), conv2d_reference(&x2, &wt, &p).unwrap());
                let prepared = PreparedConv::new(&wt, &p).unwrap();
                prop_assert_eq!(conv2d_prepared(&x, &prepared).unwrap(), want);
            }
        }

        #[test]
        fn depthwise_matches_reference(c in 1usize..6, mult in 1usize..3, h in 1usize..12, w in 1usize..12,
                                       s in 1usize..3, d in 1usize..3, pad in 0usize..3, seed in any::<u64>()) {
            let p = Conv2dParams::new([3, 3]).stride([s, s]).dilation([d, d]).padding([pad, pad]).groups(c);
            let x = rand_tensor(&[c, h, w], seed);
            let wt = rand_tensor(&[c * mult, 1, 3, 3], seed ^ 5);
            prop_assert_eq!(conv2d(&x, &wt, &p), conv2d_reference(&x, &wt, &p));
        }
    }
}
