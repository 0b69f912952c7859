//! The `im2col` matrix of an image as a [`PanelSource`] that the product reads in row
//! segments while it packs them (never materialised), and sources stacked by rows (the terms
//! of a sum of convolutions) or by columns (several inputs under the same weights).

use super::params::Geom;
use crate::gemm::PanelSource;

/// Range of output positions `o` whose input index `o·s + off − pad` lies in `0..n`.
pub(super) fn valid_range(
    n: usize,
    n_out: usize,
    stride: usize,
    off: usize,
    pad: usize,
) -> (usize, usize) {
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
pub(super) struct Tap {
    pub(super) dy: isize,
    pub(super) dx: isize,
    pub(super) xlo: usize,
    pub(super) xhi: usize,
}

/// The `im2col` matrix of input channels `c0 .. c0 + g.cg` of one image, read in segments
/// while it is packed: rows are `(channel, ky, kx)`, columns `(oy, ox)`.
pub(super) struct Im2col<'a> {
    pub(super) x: &'a [u64],
    pub(super) g: Geom,
    pub(super) c0: usize,
    /// The kernel's taps in row order (`ky`, then `kx`).
    pub(super) taps: Vec<Tap>,
}

impl<'a> Im2col<'a> {
    pub(super) fn new(x: &'a [u64], g: Geom, c0: usize) -> Self {
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
pub(super) struct StackRows<S>(pub(super) Vec<S>);

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
pub(super) struct StackCols<S>(pub(super) Vec<S>);

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
