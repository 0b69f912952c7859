//! The direct kernel for convolutions with one input channel per group (depthwise
//! convolutions and their channel multipliers): no `im2col`, one output plane per task.

// `unsafe` is allowed here only: the AVX-512 copy of the kernel is a `#[target_feature]` function.
// Every block says why it is sound.
#![allow(unsafe_code)]

use super::im2col::valid_range;
use super::params::Geom;
use crate::tensor::RingTensor;
use rayon::prelude::*;

/// Direct kernel for one input channel per group (depthwise and its channel multipliers):
/// `out[o] = Σ_t conv(x_t[o / og], w_t[o])`.
pub(super) fn conv_depthwise(terms: &[(&RingTensor, &RingTensor)], g: &Geom) -> Vec<u64> {
    let (ho, wo) = (g.ho, g.wo);
    let mut out = vec![0u64; g.o * ho * wo];
    let avx512 = crate::gemm::kernel_level().has_avx512();
    out.par_chunks_mut(ho * wo)
        .enumerate()
        .for_each(|(o, oplane)| {
            #[cfg(target_arch = "x86_64")]
            if avx512 {
                // SAFETY: `kernel_level` returns only levels the CPU supports, so it has
                // AVX-512 F/DQ.
                return unsafe { dw_plane_avx512(terms, g, o, oplane) };
            }
            let _ = avx512;
            dw_plane(terms, g, o, oplane)
        });
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
pub(super) fn dw_plane_avx512(
    terms: &[(&RingTensor, &RingTensor)],
    g: &Geom,
    o: usize,
    oplane: &mut [u64],
) {
    dw_plane(terms, g, o, oplane)
}

/// Output channel `o` of a depthwise convolution (see [`conv_depthwise`]).
#[inline(always)]
pub(super) fn dw_plane(
    terms: &[(&RingTensor, &RingTensor)],
    g: &Geom,
    o: usize,
    oplane: &mut [u64],
) {
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
