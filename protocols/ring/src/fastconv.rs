//! Fast 3×3 convolution over Z_2^64 with integer transforms only (digest §6.5, §6.16): 25
//! products per 2×2 output tile instead of 36, so 0.69 of the direct method's multiplications.
//!
//! Winograd's `F(2×2, 3×3)` needs 16 products per tile but divides by 2 in its weight transform,
//! which Z_2^64 cannot do (2 is not a unit): every bilinear algorithm for `F(2, 3)` with 4
//! products reduces mod 2 to one over GF(2), which has too few evaluation points. This module
//! uses the best division-free 1-D algorithm instead, 5 products for 2 outputs of a 3-tap
//! filter, nested in both dimensions (5 × 5 = 25 products per tile):
//!
//! * stride 1 — taps 0, 1 by `F(2, 2)` (3 products: `(x₀−x₁)w₀`, `x₁(w₀+w₁)`, `(x₂−x₁)w₁`),
//!   tap 2 directly (`x₂w₂`, `x₃w₂`);
//! * stride 2 — the even taps 0, 2 over the even inputs by `F(2, 2)`
//!   (`(x₀−x₂)w₀`, `x₂(w₀+w₂)`, `(x₄−x₂)w₂`), the odd tap directly (`x₁w₁`, `x₃w₁`).
//!
//! Both have the output transform `y₀ = m₀ + m₁ + m₃`, `y₁ = m₁ + m₂ + m₄`. Every transform
//! coefficient is 0 or ±1, so the result is exact mod 2^64, equal to [`crate::conv2d_reference`].
//!
//! The 25 products are matrix products over the channels, `M_ξ = U_ξ · V_ξ` with `U_ξ`
//! `[out channels, in channels]` (transformed weights) and `V_ξ` `[in channels, tiles]`
//! (transformed input), run by [`crate::gemm`]. Tiles are taken in bands of tile rows sized so
//! that a band's `V` and `M` stay in the core's cache.

use crate::gemm::{self, PanelSource};
use rayon::prelude::*;

/// Products per tile and dimension.
const ALPHA: usize = 5;
/// Products per tile (`ALPHA²`).
const XI: usize = ALPHA * ALPHA;

/// A 1-D algorithm: 2 outputs of a 3-tap correlation from `input` inputs with 5 products.
/// Each row lists its non-zero coefficients as `(index, sign)`.
struct Algo1d {
    /// Inputs per tile (the window of two outputs).
    input: usize,
    /// Input transform: product `a` multiplies `Σ sign·x[index]` ...
    bt: [&'static [(usize, i8)]; ALPHA],
    /// ... by `Σ sign·w[index]` (weight transform).
    g: [&'static [(usize, i8)]; ALPHA],
}

/// Output transform, both algorithms: `y₀ = m₀ + m₁ + m₃`, `y₁ = m₁ + m₂ + m₄`.
const AT: [[usize; 3]; 2] = [[0, 1, 3], [1, 2, 4]];

const STRIDE1: Algo1d = Algo1d {
    input: 4,
    bt: [
        &[(0, 1), (1, -1)],
        &[(1, 1)],
        &[(2, 1), (1, -1)],
        &[(2, 1)],
        &[(3, 1)],
    ],
    g: [
        &[(0, 1)],
        &[(0, 1), (1, 1)],
        &[(1, 1)],
        &[(2, 1)],
        &[(2, 1)],
    ],
};

const STRIDE2: Algo1d = Algo1d {
    input: 5,
    bt: [
        &[(0, 1), (2, -1)],
        &[(2, 1)],
        &[(4, 1), (2, -1)],
        &[(1, 1)],
        &[(3, 1)],
    ],
    g: [
        &[(0, 1)],
        &[(0, 1), (2, 1)],
        &[(2, 1)],
        &[(1, 1)],
        &[(1, 1)],
    ],
};

fn algo(stride: usize) -> &'static Algo1d {
    if stride == 1 { &STRIDE1 } else { &STRIDE2 }
}

/// `Σ sign · v[index]` over a transform row.
#[inline(always)]
fn combine(row: &[(usize, i8)], v: impl Fn(usize) -> u64) -> u64 {
    row.iter().fold(0u64, |s, &(i, sign)| {
        if sign > 0 {
            s.wrapping_add(v(i))
        } else {
            s.wrapping_sub(v(i))
        }
    })
}

/// Whether [`conv3x3`] computes this convolution, and pays: a 3×3 kernel, dilation 1, one
/// group, strides of 1 or 2, and enough tiles to repay the weight transform (it costs
/// `25/9` of the weights per call, amortised over the tiles).
pub fn applies(
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    out_hw: (usize, usize),
) -> bool {
    let tiles = out_hw.0.div_ceil(2) * out_hw.1.div_ceil(2);
    kernel == [3, 3]
        && dilation == [1, 1]
        && groups == 1
        && stride.iter().all(|s| (1..=2).contains(s))
        && tiles >= MIN_TILES
}

/// Fewest output tiles for which the fast path beats `im2col` (measured with
/// `cargo bench -p knapsec-benches`; below it the weight transform dominates).
const MIN_TILES: usize = 32;

/// Geometry of one fast convolution.
pub struct FastGeom {
    /// Input channels (of every term), height, width.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Output channels, height, width.
    pub o: usize,
    pub ho: usize,
    pub wo: usize,
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// The input of a band of tiles, transformed: `[k][ξ][tile]` (`k` = term · C + channel), read
/// by the product of `ξ` as its right operand `V_ξ: [k, tiles]`.
struct Transformed<'a> {
    v: &'a [u64],
    xi: usize,
    k: usize,
    tiles: usize,
}

impl PanelSource for Transformed<'_> {
    fn rows(&self) -> usize {
        self.k
    }
    fn cols(&self) -> usize {
        self.tiles
    }
    fn segment(&self, row: usize, col0: usize, dst: &mut [u64]) {
        let start = (row * XI + self.xi) * self.tiles + col0;
        dst.copy_from_slice(&self.v[start..start + dst.len()]);
    }
}

/// `U[ξ][o][k]`: the weights of every term transformed, `k` = term · C + channel.
fn transform_weights(weights: &[&[u64]], g: &FastGeom) -> Vec<u64> {
    let (ah, aw) = (algo(g.stride[0]), algo(g.stride[1]));
    let k = weights.len() * g.c;
    let mut u = vec![0u64; XI * g.o * k];
    u.par_chunks_mut(g.o * k)
        .enumerate()
        .for_each(|(xi, plane)| {
            let (rh, rw) = (ah.g[xi / ALPHA], aw.g[xi % ALPHA]);
            for (o, row) in plane.chunks_mut(k).enumerate() {
                for (t, w) in weights.iter().enumerate() {
                    for c in 0..g.c {
                        let taps = &w[(o * g.c + c) * 9..(o * g.c + c + 1) * 9];
                        row[t * g.c + c] = combine(rh, |s| combine(rw, |q| taps[s * 3 + q]));
                    }
                }
            }
        });
    u
}

/// Every input plane with its zero padding and the overhang of the last tiles: `[k][hp][wp]`.
fn pad_inputs(inputs: &[&[u64]], g: &FastGeom, hp: usize, wp: usize) -> Vec<u64> {
    let mut padded = vec![0u64; inputs.len() * g.c * hp * wp];
    padded
        .par_chunks_mut(hp * wp)
        .enumerate()
        .for_each(|(k, plane)| {
            let src = &inputs[k / g.c][(k % g.c) * g.h * g.w..(k % g.c + 1) * g.h * g.w];
            for (y, row) in src.chunks(g.w).enumerate() {
                let dst = (y + g.padding[0]) * wp + g.padding[1];
                plane[dst..dst + g.w].copy_from_slice(row);
            }
        });
    padded
}

/// `Σ_t conv2d(inputs[t], weights[t])` for 3×3 kernels (see the module doc); `inputs[t]` is
/// `[C, H, W]`, `weights[t]` `[O, C, 3, 3]`, the result `[O, Ho, Wo]`, row-major.
pub fn conv3x3(inputs: &[&[u64]], weights: &[&[u64]], g: &FastGeom) -> Vec<u64> {
    let (ah, aw) = (algo(g.stride[0]), algo(g.stride[1]));
    let (th, tw) = (g.ho.div_ceil(2), g.wo.div_ceil(2));
    let k = inputs.len() * g.c;
    // Padded planes cover every tile's window: the last tile starts at 2·(t − 1)·stride.
    let hp = (g.h + 2 * g.padding[0]).max(2 * (th - 1) * g.stride[0] + ah.input);
    let wp = (g.w + 2 * g.padding[1]).max(2 * (tw - 1) * g.stride[1] + aw.input);
    let padded = pad_inputs(inputs, g, hp, wp);
    let u = transform_weights(weights, g);
    // Bands of tile rows whose transformed input and products fit in about 1 MB, unless the
    // transformed weights are large themselves (then one band, so that they are read once).
    let per_tile = XI * 8 * (k + g.o);
    let rows_per_band = if XI * 8 * g.o * k > (1 << 20) {
        th
    } else {
        ((1usize << 20) / per_tile / tw).clamp(1, th)
    };
    let mut out = vec![0u64; g.o * g.ho * g.wo];
    let mut v = Vec::new();
    let mut m = Vec::new();
    for ty0 in (0..th).step_by(rows_per_band) {
        let band = rows_per_band.min(th - ty0);
        let tiles = band * tw;
        // Input transform: V[k][ξ][tile].
        v.resize(k * XI * tiles, 0);
        v.par_chunks_mut(XI * tiles)
            .enumerate()
            .for_each(|(kk, vk)| {
                let plane = &padded[kk * hp * wp..(kk + 1) * hp * wp];
                for tile in 0..tiles {
                    let (ty, tx) = (ty0 + tile / tw, tile % tw);
                    let (y0, x0) = (2 * ty * g.stride[0], 2 * tx * g.stride[1]);
                    let at = |i: usize, j: usize| plane[(y0 + i) * wp + x0 + j];
                    for a in 0..ALPHA {
                        for b in 0..ALPHA {
                            vk[(a * ALPHA + b) * tiles + tile] =
                                combine(ah.bt[a], |i| combine(aw.bt[b], |j| at(i, j)));
                        }
                    }
                }
            });
        // The 25 products M_ξ = U_ξ · V_ξ: [o][tile].
        m.clear();
        m.resize(XI * g.o * tiles, 0);
        m.par_chunks_mut(g.o * tiles)
            .enumerate()
            .for_each(|(xi, mx)| {
                let src = Transformed {
                    v: &v,
                    xi,
                    k,
                    tiles,
                };
                gemm::gemm_source(g.o, &u[xi * g.o * k..(xi + 1) * g.o * k], &src, mx);
            });
        // Output transform into rows 2·ty0 .. of every output plane.
        out.par_chunks_mut(g.ho * g.wo)
            .enumerate()
            .for_each(|(o, plane)| {
                let mo = |xi: usize, tile: usize| m[(xi * g.o + o) * tiles + tile];
                for tile in 0..tiles {
                    let (ty, tx) = (ty0 + tile / tw, tile % tw);
                    for (p, rows) in AT.iter().enumerate() {
                        let oy = 2 * ty + p;
                        if oy >= g.ho {
                            break;
                        }
                        for (q, cols) in AT.iter().enumerate() {
                            let ox = 2 * tx + q;
                            if ox >= g.wo {
                                break;
                            }
                            let mut s = 0u64;
                            for &a in rows {
                                for &b in cols {
                                    s = s.wrapping_add(mo(a * ALPHA + b, tile));
                                }
                            }
                            plane[oy * g.wo + ox] = s;
                        }
                    }
                }
            });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: u64, len: usize) -> Vec<u64> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s ^ (s >> 29)
            })
            .collect()
    }

    /// Each 1-D algorithm gives both outputs of the direct correlation, for random ring
    /// elements (a bilinear identity: random inputs catch any wrong coefficient).
    #[test]
    fn one_dimensional_algorithms_are_exact() {
        for (stride, a) in [(1, &STRIDE1), (2, &STRIDE2)] {
            for seed in 0..50 {
                let x = lcg(seed, a.input);
                let w = lcg(seed ^ 99, 3);
                let m: Vec<u64> = (0..ALPHA)
                    .map(|p| combine(a.bt[p], |i| x[i]).wrapping_mul(combine(a.g[p], |i| w[i])))
                    .collect();
                for (o, row) in AT.iter().enumerate() {
                    let fast = row.iter().fold(0u64, |s, &p| s.wrapping_add(m[p]));
                    let direct = (0..3).fold(0u64, |s, t| {
                        s.wrapping_add(x[o * stride + t].wrapping_mul(w[t]))
                    });
                    assert_eq!(fast, direct, "stride {stride} output {o}");
                }
            }
        }
    }

    fn ring(seed: u64, dims: &[usize]) -> crate::RingTensor {
        crate::RingTensor::from_vec(dims, lcg(seed, dims.iter().product())).unwrap()
    }

    /// The fast path equals the direct definition for every stride, padding and odd or even
    /// size, with several terms (a Beaver sum) and bands of tile rows.
    #[test]
    fn equals_the_direct_definition() {
        let shapes = [
            // (c, o, h, w, stride, padding)
            (3, 5, 7, 9, [1, 1], [1, 1]),
            (4, 3, 8, 8, [1, 1], [0, 0]),
            (2, 6, 9, 6, [2, 2], [1, 1]),
            (3, 2, 10, 11, [2, 2], [0, 0]),
            (5, 4, 7, 10, [1, 2], [1, 0]),
            (2, 3, 6, 5, [2, 1], [2, 2]),
            (17, 9, 33, 30, [1, 1], [1, 1]),
        ];
        for (seed, &(c, o, h, w, stride, padding)) in shapes.iter().enumerate() {
            let seed = seed as u64;
            let p = crate::Conv2dParams::new([3, 3])
                .stride(stride)
                .padding(padding);
            let (ho, wo) = p.output_hw(h, w).unwrap();
            let g = FastGeom {
                c,
                h,
                w,
                o,
                ho,
                wo,
                stride,
                padding,
            };
            let xs = [ring(seed, &[c, h, w]), ring(seed + 100, &[c, h, w])];
            let ws = [
                ring(seed + 200, &[o, c, 3, 3]),
                ring(seed + 300, &[o, c, 3, 3]),
            ];
            for terms in 1..=2 {
                let inputs: Vec<&[u64]> = xs[..terms].iter().map(|x| x.data()).collect();
                let weights: Vec<&[u64]> = ws[..terms].iter().map(|w| w.data()).collect();
                let fast = conv3x3(&inputs, &weights, &g);
                let mut direct = vec![0u64; o * ho * wo];
                for t in 0..terms {
                    let y = crate::conv2d_reference(&xs[t], &ws[t], &p).unwrap();
                    for (d, v) in direct.iter_mut().zip(y.data()) {
                        *d = d.wrapping_add(*v);
                    }
                }
                assert_eq!(
                    fast, direct,
                    "c={c} o={o} {h}x{w} stride {stride:?} pad {padding:?}"
                );
            }
        }
    }

    /// `conv2d` takes the fast path on a layer with enough tiles, and still equals the direct
    /// definition.
    #[test]
    fn conv2d_takes_the_fast_path_exactly() {
        let p = crate::Conv2dParams::new([3, 3]).padding([1, 1]);
        assert!(applies(p.kernel, p.stride, p.dilation, p.groups, (16, 16)));
        let (x, w) = (ring(1, &[8, 16, 16]), ring(2, &[6, 8, 3, 3]));
        let fast = crate::conv2d(&x, &w, &p).unwrap();
        assert_eq!(fast, crate::conv2d_reference(&x, &w, &p).unwrap());
    }
}
