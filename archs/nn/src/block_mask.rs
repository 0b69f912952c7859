//! The block-ReLU mask as one CPU kernel (digest §1.1 semantics, the same as
//! [`crate::block_relu`]'s tensor-op path): one pass over the input computes every patch's sum
//! and writes its sign into the mask, whatever mixture of patch sizes the channels have.
//!
//! The tensor-op path costs a handful of small libtorch operations per distinct patch size of a
//! layer (a layer of a knapsack spec has dozens), which dominates a training step; this kernel
//! costs about as much as one ReLU. Planes (one image, one channel) are processed in parallel
//! with rayon. Patch sums are accumulated in `f64`; the sign test is strict (`sum > 0`, i.e.
//! the mean of the valid pixels is positive).

// `unsafe` is allowed here only: the kernel reads and writes the tensors' memory as slices. Every
// block says why it is sound.
#![allow(unsafe_code)]

use knapsec_core::BlockSize;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// What one channel does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelOp {
    Identity,
    Zero,
    Relu,
    Patch(usize, usize),
}

impl ChannelOp {
    pub(crate) fn of(b: BlockSize) -> Self {
        match b {
            BlockSize::Patch { h: 1, w: 1 } => ChannelOp::Relu,
            BlockSize::Patch { h, w } => ChannelOp::Patch(h as usize, w as usize),
            BlockSize::Identity => ChannelOp::Identity,
            BlockSize::Zero => ChannelOp::Zero,
        }
    }
}

/// Element types the kernel handles.
trait Element: Copy + Send + Sync + 'static {
    const ZERO: Self;
    const ONE: Self;
    fn to_f64(self) -> f64;
    fn positive(self) -> bool;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn positive(self) -> bool {
        self > 0.0
    }
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        self
    }
    fn positive(self) -> bool {
        self > 0.0
    }
}

/// The mask of one `h × w` plane.
fn plane_mask<T: Element>(op: ChannelOp, x: &[T], m: &mut [T], w: usize, sums: &mut Vec<f64>) {
    let one = |p: bool| if p { T::ONE } else { T::ZERO };
    match op {
        ChannelOp::Identity => m.fill(T::ONE),
        ChannelOp::Zero => m.fill(T::ZERO),
        ChannelOp::Relu => m
            .iter_mut()
            .zip(x)
            .for_each(|(m, &v)| *m = one(v.positive())),
        ChannelOp::Patch(bh, bw) => {
            let band = bh * w;
            let patches = w.div_ceil(bw);
            for (xb, mb) in x.chunks(band).zip(m.chunks_mut(band)) {
                sums.clear();
                sums.resize(patches, 0.0);
                for row in xb.chunks(w) {
                    for (p, cols) in row.chunks(bw).enumerate() {
                        sums[p] += cols.iter().map(|v| v.to_f64()).sum::<f64>();
                    }
                }
                for row in mb.chunks_mut(w) {
                    for (p, cols) in row.chunks_mut(bw).enumerate() {
                        cols.fill(one(sums[p] > 0.0));
                    }
                }
            }
        }
    }
}

fn fill<T: Element>(ops: &[ChannelOp], x: &[T], m: &mut [T], plane: usize, w: usize) {
    let c = ops.len();
    m.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .enumerate()
        .for_each_init(Vec::new, |sums, (i, (m, x))| {
            plane_mask(ops[i % c], x, m, w, sums)
        });
}

/// The mask of `x` (`[N, C, H, W]`, `C == ops.len()`), or `None` where the kernel does not
/// apply (not on the CPU, not `f32`/`f64`, not 4-D); the caller then uses the tensor ops.
pub(crate) fn mask(x: &Tensor, ops: &[ChannelOp]) -> Option<Tensor> {
    if x.device() != Device::Cpu || !matches!(x.kind(), Kind::Float | Kind::Double) {
        return None;
    }
    let (n, c, h, w) = x.size4().ok()?;
    if c as usize != ops.len() || n * c * h * w == 0 {
        return None;
    }
    let x = x.contiguous();
    let numel = (n * c * h * w) as usize;
    let plane = (h * w) as usize;
    let out = Tensor::empty([n, c, h, w], (x.kind(), Device::Cpu));
    // SAFETY: `x` and `out` are contiguous CPU tensors of `numel` elements of the matched kind,
    // alive (owned here) for the whole borrow; `out` is fresh, so the two never alias.
    unsafe {
        match x.kind() {
            Kind::Float => fill(
                ops,
                std::slice::from_raw_parts(x.data_ptr() as *const f32, numel),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, numel),
                plane,
                w as usize,
            ),
            _ => fill(
                ops,
                std::slice::from_raw_parts(x.data_ptr() as *const f64, numel),
                std::slice::from_raw_parts_mut(out.data_ptr() as *mut f64, numel),
                plane,
                w as usize,
            ),
        }
    }
    Some(out)
}
