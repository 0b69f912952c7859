//! Spatial maps with public geometry over Z_2^64 (digest §6.14, the ops of imported networks):
//! zero padding, nearest-neighbour resizing (index maps) and bilinear resizing (a linear map
//! with public fixed-point weights).
//!
//! Everything here is linear, so it applies equally to clear values and to additive shares.
//! [`pad`] and [`resize`] in nearest mode copy values; bilinear [`resize`] gives each output
//! the weighted sum of its (up to) four source pixels with weights at `frac_bits`, so on
//! inputs at `f` fractional bits its result carries `2f`: the caller truncates by `f`, as
//! after a convolution (the plain oracle floors; each party shifts its own share).
//!
//! Source coordinates follow PyTorch's `F.interpolate` with an output size (ONNX `Resize` in
//! the modes PyTorch exports): nearest reads `⌊o · in / out⌋`; bilinear reads
//! `o · (in − 1)/(out − 1)` with `align_corners`, else `(o + ½) · in/out − ½` clamped at 0.
//! The coordinates are computed in exact integer arithmetic, so every party derives the same
//! weights.

use crate::error::{Result, RingError};
use crate::tensor::RingTensor;
use knapsec_core::graph::ResizeMode;
use rayon::prelude::*;

/// Zero padding `[top, left, bottom, right]` of every channel: `[C, H, W] → [C, H + t + b,
/// W + l + r]`.
pub fn pad(x: &RingTensor, pads: [usize; 4]) -> Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    let [t, l, b, r] = pads;
    let (oh, ow) = (h + t + b, w + l + r);
    let mut out = vec![0u64; c * oh * ow];
    if oh * ow > 0 && h * w > 0 {
        out.par_chunks_mut(oh * ow)
            .zip(x.data().par_chunks(h * w))
            .for_each(|(o, plane)| {
                for (y, row) in plane.chunks(w).enumerate() {
                    let start = (t + y) * ow + l;
                    o[start..start + w].copy_from_slice(row);
                }
            });
    }
    RingTensor::from_vec(&[c, oh, ow], out)
}

/// One output coordinate of a bilinear resize along one axis: the two source indices and
/// the weight of the second at `frac_bits` (the first has `2^f` minus it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tap {
    i0: usize,
    i1: usize,
    a: u64,
}

/// The taps of a bilinear resize of one axis from `n` to `out` values.
fn bilinear_taps(n: usize, out: usize, align_corners: bool, frac_bits: u32) -> Vec<Tap> {
    let (n, o_n) = (n as u128, out as u128);
    (0..o_n)
        .map(|o| {
            // Source coordinate num / den ≥ 0.
            let (num, den) = if align_corners {
                if o_n == 1 {
                    (0, 1)
                } else {
                    (o * (n - 1), o_n - 1)
                }
            } else {
                ((2 * o + 1) * n)
                    .checked_sub(o_n)
                    .map_or((0, 1), |v| (v, 2 * o_n))
            };
            let i0 = (num / den).min(n - 1);
            if i0 + 1 >= n {
                return Tap {
                    i0: i0 as usize,
                    i1: i0 as usize,
                    a: 0,
                };
            }
            let rem = num - i0 * den;
            // round(rem / den · 2^f)
            let a = ((rem << (frac_bits + 1)) + den) / (2 * den);
            Tap {
                i0: i0 as usize,
                i1: i0 as usize + 1,
                a: a as u64,
            }
        })
        .collect()
}

/// Resizes every channel of `x` to `height × width`. Nearest: the source pixels, exactly.
/// Bilinear: the weighted sums at `frac_bits` more fractional bits than `x` (the caller
/// truncates); the four weights of an output are within ½ ulp of the products of the axes'
/// weights and sum to exactly `2^frac_bits`, so a constant map stays constant.
pub fn resize(
    x: &RingTensor,
    height: usize,
    width: usize,
    mode: ResizeMode,
    frac_bits: u32,
) -> Result<RingTensor> {
    let (c, h, w) = x.chw()?;
    if height == 0 || width == 0 || h == 0 || w == 0 {
        return Err(RingError::invalid(
            "resize",
            format!("cannot resize {h}x{w} to {height}x{width}"),
        ));
    }
    if frac_bits >= 32 {
        return Err(RingError::invalid(
            "resize",
            format!("{frac_bits} fractional bits for the weights (at most 31)"),
        ));
    }
    let mut out = vec![0u64; c * height * width];
    let planes = out
        .par_chunks_mut(height * width)
        .zip(x.data().par_chunks(h * w));
    match mode {
        ResizeMode::Nearest => {
            let src = |o: usize, n: usize, out: usize| {
                ((o as u128 * n as u128) / out as u128).min(n as u128 - 1) as usize
            };
            let ys: Vec<usize> = (0..height).map(|o| src(o, h, height)).collect();
            let xs: Vec<usize> = (0..width).map(|o| src(o, w, width)).collect();
            planes.for_each(|(o, plane)| {
                for (oy, &iy) in ys.iter().enumerate() {
                    let row = &plane[iy * w..(iy + 1) * w];
                    for (v, &ix) in o[oy * width..(oy + 1) * width].iter_mut().zip(&xs) {
                        *v = row[ix];
                    }
                }
            });
        }
        ResizeMode::Bilinear { align_corners } => {
            let ys = bilinear_taps(h, height, align_corners, frac_bits);
            let xs = bilinear_taps(w, width, align_corners, frac_bits);
            let one = 1u64 << frac_bits;
            let half = one >> 1;
            planes.for_each(|(o, plane)| {
                for (oy, ty) in ys.iter().enumerate() {
                    let (r0, r1) = (&plane[ty.i0 * w..][..w], &plane[ty.i1 * w..][..w]);
                    for (v, tx) in o[oy * width..(oy + 1) * width].iter_mut().zip(&xs) {
                        let w11 = (ty.a * tx.a + half) >> frac_bits;
                        let w10 = ty.a - w11;
                        let w01 = tx.a - w11;
                        let w00 = one - ty.a - w01;
                        *v = r0[tx.i0]
                            .wrapping_mul(w00)
                            .wrapping_add(r0[tx.i1].wrapping_mul(w01))
                            .wrapping_add(r1[tx.i0].wrapping_mul(w10))
                            .wrapping_add(r1[tx.i1].wrapping_mul(w11));
                    }
                }
            });
        }
    }
    RingTensor::from_vec(&[c, height, width], out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_places_the_map_among_zeros() {
        let x = RingTensor::from_vec(&[2, 1, 2], vec![1, 2, 3, 4]).unwrap();
        let y = pad(&x, [1, 0, 0, 1]).unwrap();
        assert_eq!(y.dims(), &[2, 2, 3]);
        assert_eq!(y.data(), &[0, 0, 0, 1, 2, 0, 0, 0, 0, 3, 4, 0]);
        assert_eq!(pad(&x, [0; 4]).unwrap(), x);
    }

    #[test]
    fn nearest_repeats_source_pixels() {
        let x = RingTensor::from_vec(&[1, 2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap();
        let y = resize(&x, 4, 6, ResizeMode::Nearest, 12).unwrap();
        assert_eq!(
            y.data(),
            &[
                1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 4, 4, 5, 5, 6, 6
            ]
        );
        // Down: 3 → 2 reads ⌊0·3/2⌋ = 0 and ⌊1·3/2⌋ = 1.
        let d = resize(&x, 1, 2, ResizeMode::Nearest, 12).unwrap();
        assert_eq!(d.data(), &[1, 2]);
    }

    #[test]
    fn bilinear_taps_follow_pytorch() {
        let f = 8;
        // ×2 half-pixel: sources −0.25 (clamped to 0), 0.25, 0.75, 1.25, 1.75, 2.25 → clamp.
        let t = bilinear_taps(3, 6, false, f);
        let want = [
            (0, 1, 0),
            (0, 1, 64),
            (0, 1, 192),
            (1, 2, 64),
            (1, 2, 192),
            (2, 2, 0),
        ];
        for (tap, (i0, i1, a)) in t.iter().zip(want) {
            assert_eq!((tap.i0, tap.i1, tap.a), (i0, i1, a));
        }
        // align_corners 3 → 5: sources 0, 0.5, 1, 1.5, 2.
        let t = bilinear_taps(3, 5, true, f);
        let a: Vec<_> = t.iter().map(|t| (t.i0, t.a)).collect();
        assert_eq!(a, vec![(0, 0), (0, 128), (1, 0), (1, 128), (2, 0)]);
        // 1/3 rounds to nearest: align_corners 2 → 4, source 1/3 → 85.33 → 85.
        assert_eq!(bilinear_taps(2, 4, true, f)[1].a, 85);
    }

    #[test]
    fn bilinear_weights_sum_to_one_and_interpolate() {
        let f = 10;
        // A constant map stays constant (weights sum to 2^f exactly).
        let c = RingTensor::from_i64(&[1, 3, 5], &[-7 << f; 15]).unwrap();
        for ac in [false, true] {
            let y = resize(&c, 7, 11, ResizeMode::Bilinear { align_corners: ac }, f).unwrap();
            assert!(y.to_i64().iter().all(|&v| v == -7 << (2 * f)));
        }
        // A ramp along x with align_corners is reproduced exactly at the sample points.
        let x = RingTensor::from_i64(&[1, 1, 3], &[0, 4 << f, 8 << f]).unwrap();
        let mut y = resize(
            &x,
            1,
            5,
            ResizeMode::Bilinear {
                align_corners: true,
            },
            f,
        )
        .unwrap();
        y.shr_arith_in_place(f);
        assert_eq!(y.to_i64(), vec![0, 2 << f, 4 << f, 6 << f, 8 << f]);
        assert!(resize(&x, 0, 5, ResizeMode::Nearest, f).is_err());
    }
}
