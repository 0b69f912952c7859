//! Pooling and block (patch) reductions over Z_2^64 (digest §1.1, §1.2, §6.7, §6.11, §6.14).
//!
//! Everything here is linear (sums, copies), so it applies equally to clear values and to
//! additive shares; divisions are left to the caller (a truncation on shares).
//!
//! * [`window_sums`]: average-pooling window sums with zero padding (the window geometry of
//!   PyTorch and ONNX, [`PoolGeometry`]: pads per side, `ceil_mode`), and [`window_counts`]:
//!   each window's divisor with or without `count_include_pad`.
//! * [`window_taps`]: the `kh·kw` strided taps of every window (for max pooling by successive
//!   comparisons), padding with edge values or zeros.
//! * [`global_sum`]: per-channel sum, `[C, H, W] → [C, 1, 1]`.
//! * [`BlockLayout`]: the patches of a block ReLU layer. Patches tile each channel from the
//!   top-left with stride equal to the patch size; ragged right/bottom patches hold only their
//!   in-bounds pixels (their sums equal those of the reference's zero-padded tiling, §1.2).
//!   [`BlockLayout::patch_sums`] gives one sum per patch of every patch channel, in the order
//!   channel ascending, then patch row, then patch column; [`BlockLayout::expand`] writes each
//!   patch's value to all its in-bounds pixels.

use crate::error::{Result, RingError};
use crate::tensor::RingTensor;
use knapsec_core::BlockSize;
use knapsec_core::graph::PoolGeometry;
use rayon::prelude::*;

/// The windows of `geo` on an `h × w` map: `(ho, wo)` and, per output row and column, the
/// window's first row (column) relative to the map, which may be negative (padding).
struct Windows {
    ho: usize,
    wo: usize,
    kernel: [isize; 2],
    stride: [isize; 2],
    begin: [isize; 2],
}

impl Windows {
    fn new(h: usize, w: usize, geo: &PoolGeometry) -> Result<Self> {
        let bad = |why: String| RingError::invalid("pool", why);
        let (h32, w32) = (
            u32::try_from(h).map_err(|_| bad(format!("height {h} is too large")))?,
            u32::try_from(w).map_err(|_| bad(format!("width {w} is too large")))?,
        );
        let (ho, wo) = geo.output_hw(h32, w32).map_err(bad)?;
        let i = |v: u32| v as isize;
        Ok(Windows {
            ho: ho as usize,
            wo: wo as usize,
            kernel: geo.kernel.map(i),
            stride: geo.stride.map(i),
            begin: [i(geo.pads[0]), i(geo.pads[1])],
        })
    }

    /// First row (`axis` 0) or column (1) of window `o`.
    fn start(&self, o: usize, axis: usize) -> isize {
        o as isize * self.stride[axis] - self.begin[axis]
    }
}

/// Sum of each pooling window over the pixels of the map (padding adds nothing);
/// `[C, H, W] → [C, Ho, Wo]`.
pub fn window_sums(x: &RingTensor, geo: &PoolGeometry) -> Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    let win = Windows::new(h, w, geo)?;
    let (ho, wo) = (win.ho, win.wo);
    let mut out = vec![0u64; c * ho * wo];
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(ch, oplane)| {
            let plane = &x.data()[ch * h * w..(ch + 1) * h * w];
            for oy in 0..ho {
                let y0 = win.start(oy, 0);
                for ox in 0..wo {
                    let x0 = win.start(ox, 1);
                    let mut s = 0u64;
                    for iy in y0.max(0)..(y0 + win.kernel[0]).min(h as isize) {
                        let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                        for ix in x0.max(0)..(x0 + win.kernel[1]).min(w as isize) {
                            s = s.wrapping_add(row[ix as usize]);
                        }
                    }
                    oplane[oy * wo + ox] = s;
                }
            }
        });
    RingTensor::from_vec(&[c, ho, wo], out)
}

/// Divisor of each window of an `h × w` map (`Ho · Wo` values, shared by all channels), as
/// PyTorch and ONNX: with `count_include_pad` the window clipped to the padded map (in ceil
/// mode a last window may run past it; that part never counts), else the number of pixels of
/// the map it holds.
pub fn window_counts(
    h: usize,
    w: usize,
    geo: &PoolGeometry,
    count_include_pad: bool,
) -> Result<Vec<u64>> {
    let win = Windows::new(h, w, geo)?;
    let end_pad = [geo.pads[2] as isize, geo.pads[3] as isize];
    let span = |o: usize, axis: usize, n: usize| -> u64 {
        let start = win.start(o, axis);
        let end = start + win.kernel[axis];
        if count_include_pad {
            (end.min(n as isize + end_pad[axis]) - start) as u64
        } else {
            (end.min(n as isize) - start.max(0)).max(0) as u64
        }
    };
    let wo = win.wo;
    Ok((0..win.ho * wo)
        .map(|p| span(p / wo, 0, h) * span(p % wo, 1, w))
        .collect())
}

/// How [`window_taps`] fills positions outside the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapPadding {
    /// Zeros.
    Zero,
    /// The nearest in-bounds value (edge replication). Every window holds a pixel of the map
    /// ([`PoolGeometry`]: each pad is smaller than the window), and the nearest one of a
    /// position outside is then in the same window, so max pooling over the taps gives the
    /// same maximum as −∞ padding.
    Edge,
}

/// The `kh·kw` taps of every pooling window: tap `t = ky·kw + kx` is the `[C, Ho, Wo]` tensor
/// of the element at offset `(ky, kx)` in each window.
pub fn window_taps(
    x: &RingTensor,
    geo: &PoolGeometry,
    fill: TapPadding,
) -> Result<Vec<RingTensor>> {
    let (c, h, w) = x.chw()?;
    let win = Windows::new(h, w, geo)?;
    let (ho, wo) = (win.ho, win.wo);
    let (kh, kw) = (win.kernel[0] as usize, win.kernel[1] as usize);
    let clamp = |v: isize, n: usize| -> Option<usize> {
        if (0..n as isize).contains(&v) {
            Some(v as usize)
        } else if fill == TapPadding::Edge {
            Some(v.clamp(0, n as isize - 1) as usize)
        } else {
            None
        }
    };
    (0..kh * kw)
        .into_par_iter()
        .map(|t| {
            let (ky, kx) = ((t / kw) as isize, (t % kw) as isize);
            let mut out = vec![0u64; c * ho * wo];
            for ch in 0..c {
                let plane = &x.data()[ch * h * w..(ch + 1) * h * w];
                for oy in 0..ho {
                    let iy = clamp(win.start(oy, 0) + ky, h);
                    for ox in 0..wo {
                        let ix = clamp(win.start(ox, 1) + kx, w);
                        if let (Some(iy), Some(ix)) = (iy, ix) {
                            out[(ch * ho + oy) * wo + ox] = plane[iy * w + ix];
                        }
                    }
                }
            }
            RingTensor::from_vec(&[c, ho, wo], out)
        })
        .collect()
}

/// Per-channel sum: `[C, H, W] → [C, 1, 1]`.
pub fn global_sum(x: &RingTensor) -> Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    let plane = h * w;
    let sums = (0..c)
        .map(|ch| {
            x.data()[ch * plane..(ch + 1) * plane]
                .iter()
                .fold(0u64, |s, &v| s.wrapping_add(v))
        })
        .collect();
    RingTensor::from_vec(&[c, 1, 1], sums)
}

/// What a block ReLU does with one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBlock {
    /// One decision per `bh × bw` patch; the channel's patch values start at `offset` in the
    /// flat patch vector and number `rows · cols`.
    Patch {
        /// Patch height.
        bh: usize,
        /// Patch width.
        bw: usize,
        /// Patches down the channel (`ceil(H / bh)`).
        rows: usize,
        /// Patches across the channel (`ceil(W / bw)`).
        cols: usize,
        /// Where the channel's patch values start in the flat patch vector.
        offset: usize,
    },
    /// Passes through.
    Identity,
    /// Forced to zero.
    Zero,
}

/// The patch structure of one block-ReLU layer on a `[C, H, W]` activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    c: usize,
    h: usize,
    w: usize,
    channels: Vec<ChannelBlock>,
    patches: usize,
}

impl BlockLayout {
    /// The layout of `blocks` (one per channel) on `[c, h, w]`.
    pub fn new(c: usize, h: usize, w: usize, blocks: &[BlockSize]) -> Result<Self> {
        if blocks.len() != c {
            return Err(RingError::invalid(
                "block layout",
                format!("{} block sizes for {c} channels", blocks.len()),
            ));
        }
        let mut offset = 0;
        let mut channels = Vec::with_capacity(c);
        for (ch, b) in blocks.iter().enumerate() {
            channels.push(match *b {
                BlockSize::Patch { h: bh, w: bw } => {
                    if bh == 0 || bw == 0 {
                        return Err(RingError::invalid(
                            "block layout",
                            format!("channel {ch}: zero-sized patch {b}"),
                        ));
                    }
                    let (bh, bw) = (bh as usize, bw as usize);
                    let (rows, cols) = (h.div_ceil(bh), w.div_ceil(bw));
                    let cb = ChannelBlock::Patch {
                        bh,
                        bw,
                        rows,
                        cols,
                        offset,
                    };
                    offset += rows * cols;
                    cb
                }
                BlockSize::Identity => ChannelBlock::Identity,
                BlockSize::Zero => ChannelBlock::Zero,
            });
        }
        Ok(BlockLayout {
            c,
            h,
            w,
            channels,
            patches: offset,
        })
    }

    /// Total number of patches (= DReLUs of the layer).
    pub fn num_patches(&self) -> usize {
        self.patches
    }

    /// Per-channel plan.
    pub fn channels(&self) -> &[ChannelBlock] {
        &self.channels
    }

    /// `[C, H, W]` of the activation.
    pub fn dims(&self) -> [usize; 3] {
        [self.c, self.h, self.w]
    }

    fn check(&self, x: &RingTensor, op: &'static str) -> Result<()> {
        if x.dims() != [self.c, self.h, self.w] {
            return Err(RingError::ShapeMismatch {
                op,
                left: vec![self.c, self.h, self.w],
                right: x.dims().to_vec(),
            });
        }
        Ok(())
    }

    /// The sum of every patch's in-bounds pixels (flat, in layout order).
    pub fn patch_sums(&self, x: &RingTensor) -> Result<Vec<u64>> {
        self.check(x, "patch_sums")?;
        let (h, w) = (self.h, self.w);
        let mut out = vec![0u64; self.patches];
        for (ch, cb) in self.channels.iter().enumerate() {
            let ChannelBlock::Patch {
                bh,
                bw,
                cols,
                offset,
                rows,
            } = *cb
            else {
                continue;
            };
            let plane = &x.data()[ch * h * w..(ch + 1) * h * w];
            let sums = &mut out[offset..offset + rows * cols];
            for y in 0..h {
                let srow = &mut sums[(y / bh) * cols..(y / bh + 1) * cols];
                for (xx, &v) in plane[y * w..(y + 1) * w].iter().enumerate() {
                    srow[xx / bw] = srow[xx / bw].wrapping_add(v);
                }
            }
        }
        Ok(out)
    }

    /// A `[C, H, W]` tensor with each patch's value (from `values`, flat in layout order)
    /// written to all its pixels, `identity` in identity channels and `zero` in zero channels.
    pub fn expand(&self, values: &[u64], identity: u64, zero: u64) -> Result<RingTensor> {
        if values.len() != self.patches {
            return Err(RingError::WrongLength {
                op: "expand",
                shape: vec![self.patches],
                expected: self.patches,
                found: values.len(),
            });
        }
        let (h, w) = (self.h, self.w);
        let mut out = vec![0u64; self.c * h * w];
        if h * w == 0 {
            return RingTensor::from_vec(&[self.c, h, w], out);
        }
        out.par_chunks_mut(h * w)
            .zip(self.channels.par_iter())
            .for_each(|(plane, cb)| match *cb {
                ChannelBlock::Patch {
                    bh,
                    bw,
                    cols,
                    offset,
                    ..
                } => {
                    for y in 0..h {
                        let vrow = &values[offset + (y / bh) * cols..offset + (y / bh + 1) * cols];
                        for (xx, p) in plane[y * w..(y + 1) * w].iter_mut().enumerate() {
                            *p = vrow[xx / bw];
                        }
                    }
                }
                ChannelBlock::Identity => plane.fill(identity),
                ChannelBlock::Zero => plane.fill(zero),
            });
        RingTensor::from_vec(&[self.c, h, w], out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avg_window_sums_and_counts() {
        let x = RingTensor::from_vec(&[1, 3, 3], (1..=9).collect()).unwrap();
        let sym = |k, s, p| PoolGeometry::symmetric([k, k], [s, s], [p, p]);
        let s = window_sums(&x, &sym(3, 2, 1)).unwrap();
        assert_eq!(s.dims(), &[1, 2, 2]);
        assert_eq!(
            s.data(),
            &[1 + 2 + 4 + 5, 2 + 3 + 5 + 6, 4 + 5 + 7 + 8, 5 + 6 + 8 + 9]
        );
        assert_eq!(
            window_counts(3, 3, &sym(3, 2, 1), true).unwrap(),
            vec![9; 4]
        );
        assert_eq!(
            window_counts(3, 3, &sym(3, 2, 1), false).unwrap(),
            vec![4; 4]
        );
        assert_eq!(
            window_counts(5, 4, &sym(3, 2, 1), false).unwrap(),
            vec![4, 6, 6, 9, 4, 6]
        );
        assert!(window_sums(&x, &sym(2, 1, 2)).is_err());
    }

    #[test]
    fn asymmetric_pads_and_ceil_mode() {
        // 1×5×5, k2 s2 ceil: 3×3 windows, the last row and column hold one pixel each.
        let x = RingTensor::from_vec(&[1, 5, 5], (1..=25).collect()).unwrap();
        let ceil = PoolGeometry {
            ceil_mode: true,
            ..PoolGeometry::symmetric([2, 2], [2, 2], [0, 0])
        };
        let s = window_sums(&x, &ceil).unwrap();
        assert_eq!(s.dims(), &[1, 3, 3]);
        assert_eq!(s.data()[2], 5 + 10);
        assert_eq!(s.data()[8], 25);
        // The overhang never counts, with or without count_include_pad.
        for cip in [true, false] {
            assert_eq!(
                window_counts(5, 5, &ceil, cip).unwrap(),
                vec![4, 4, 2, 4, 4, 2, 2, 2, 1]
            );
        }
        // Top/left padding only: the first windows hold one row/column of the map.
        let begin = PoolGeometry {
            pads: [1, 1, 0, 0],
            ..ceil
        };
        assert_eq!(window_counts(5, 5, &begin, true).unwrap(), vec![4; 9]);
        assert_eq!(
            window_counts(5, 5, &begin, false).unwrap(),
            vec![1, 2, 2, 2, 4, 4, 2, 4, 4]
        );
        assert_eq!(window_sums(&x, &begin).unwrap().data()[0], 1);
        // Padded bottom/right with a ceil window past it: the declared pad counts, the
        // overhang does not (5 + 1 padding, k3 s2 ceil: windows 0..3, 2..5, 4..7).
        let end = PoolGeometry {
            pads: [0, 0, 1, 1],
            kernel: [3, 3],
            ..ceil
        };
        assert_eq!(
            window_counts(5, 5, &end, true).unwrap(),
            vec![9, 9, 6, 9, 9, 6, 6, 6, 4]
        );
        assert_eq!(window_counts(5, 5, &end, false).unwrap()[8], 1);
        // Edge taps of a window that runs past the map repeat its last pixel.
        let row = RingTensor::from_vec(&[1, 1, 3], vec![1, 2, 3]).unwrap();
        let g = PoolGeometry {
            ceil_mode: true,
            ..PoolGeometry::symmetric([1, 2], [1, 2], [0, 0])
        };
        let taps = window_taps(&row, &g, TapPadding::Edge).unwrap();
        assert_eq!(taps[0].data(), &[1, 3]);
        assert_eq!(taps[1].data(), &[2, 3]);
    }

    #[test]
    fn taps_with_edge_padding() {
        let x = RingTensor::from_vec(&[1, 2, 2], vec![1, 2, 3, 4]).unwrap();
        let geo = PoolGeometry::symmetric([2, 2], [1, 1], [1, 1]);
        let taps = window_taps(&x, &geo, TapPadding::Edge).unwrap();
        assert_eq!(taps.len(), 4);
        // Window (0, 0) covers padded rows −1..1, cols −1..1: taps are x[0,0] repeated.
        assert_eq!(
            taps.iter().map(|t| t.data()[0]).collect::<Vec<_>>(),
            vec![1, 1, 1, 1]
        );
        // Window (2, 2) covers rows 1..3, cols 1..3: x[1,1] repeated.
        assert_eq!(
            taps.iter().map(|t| t.data()[8]).collect::<Vec<_>>(),
            vec![4, 4, 4, 4]
        );
        let z = window_taps(&x, &geo, TapPadding::Zero).unwrap();
        assert_eq!(
            z.iter().map(|t| t.data()[0]).collect::<Vec<_>>(),
            vec![0, 0, 0, 1]
        );
    }

    #[test]
    fn global_sums() {
        let x = RingTensor::from_i64(&[2, 1, 3], &[1, 2, 3, -4, 0, 1]).unwrap();
        assert_eq!(global_sum(&x).unwrap().to_i64(), vec![6, -3]);
    }

    #[test]
    fn ragged_patches_sum_valid_pixels_and_expand_back() {
        // 1 channel 3×5, patch 2×2: patches rows {0,1},{2}; cols {0,1},{2,3},{4}.
        let x = RingTensor::from_vec(&[3, 3, 5], (0..45).collect()).unwrap();
        let blocks = [
            BlockSize::Patch { h: 2, w: 2 },
            BlockSize::Identity,
            BlockSize::RELU,
        ];
        let l = BlockLayout::new(3, 3, 5, &blocks).unwrap();
        assert_eq!(l.num_patches(), 6 + 15);
        let s = l.patch_sums(&x).unwrap();
        assert_eq!(
            &s[..6],
            &[1 + 5 + 6, 2 + 3 + 7 + 8, 4 + 9, 10 + 11, 12 + 13, 14]
        );
        assert_eq!(&s[6..], &(30..45).collect::<Vec<_>>()[..]);
        let e = l.expand(&(100..121).collect::<Vec<_>>(), 7, 0).unwrap();
        assert_eq!(
            &e.data()[..15],
            &[
                100, 100, 101, 101, 102, 100, 100, 101, 101, 102, 103, 103, 104, 104, 105
            ]
        );
        assert_eq!(&e.data()[15..30], &[7; 15]);
        assert_eq!(&e.data()[30..], &(106..121).collect::<Vec<_>>()[..]);
        assert!(l.expand(&[1, 2], 1, 0).is_err());
        assert!(l.patch_sums(&RingTensor::zeros(&[3, 5, 3])).is_err());
        assert!(BlockLayout::new(2, 3, 5, &blocks).is_err());
    }
}
