//! The geometry of a convolution: [`Conv2dParams`] (kernel, stride, padding, dilation,
//! groups, as PyTorch's `conv2d` takes them) and the checked shape of one convolution.

use crate::error::{Result, RingError};
use crate::tensor::RingTensor;

/// Geometry of a convolution (or a pooling window): kernel, stride, zero padding, dilation,
/// groups, each `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Step between windows, vertical and horizontal.
    pub stride: [usize; 2],
    /// Zero padding added on each side, vertical and horizontal.
    pub padding: [usize; 2],
    /// Spacing between kernel taps, vertical and horizontal.
    pub dilation: [usize; 2],
    /// Groups: input and output channels are split into this many independent parts.
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
pub(super) struct Geom {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Input channels per group.
    pub(super) cg: usize,
    /// Output channels per group.
    pub(super) og: usize,
    pub(super) p: Conv2dParams,
}

impl Geom {
    pub(super) fn k(&self) -> usize {
        self.cg * self.p.kernel[0] * self.p.kernel[1]
    }
    pub(super) fn pixels(&self) -> usize {
        self.ho * self.wo
    }
}

pub(super) fn geometry(x: &RingTensor, w: &RingTensor, p: &Conv2dParams) -> Result<Geom> {
    geometry_of(x, w.dims(), p)
}

/// [`geometry`] from the weights' dimensions.
pub(super) fn geometry_of(x: &RingTensor, w_dims: &[usize], p: &Conv2dParams) -> Result<Geom> {
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
