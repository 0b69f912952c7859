//! The AVX-512 BW copy of [`super`]'s kernels for short windows (`2 ≤ n ≤ 32` compared
//! bits, the approximate DReLU's, digest §6.12): a batch's patches lie `n` bytes after one
//! another in every input and in the messages, so one vector holds `⌊64/n⌋` whole patches
//! (four at `n = 13`) instead of one. The prefix sums are segmented (each doubling step adds
//! only into lanes at least that far into their patch), the per-patch choices (`q`, `β`, the
//! all-ones case) become lane masks built from the patches' scalars, the products mod 67 are
//! two lookups in tables of logarithms and powers, and the rotation is one byte permute
//! whose index adds each lane's patch base to its rotated position: everything stays in byte
//! lanes (the messages need AVX-512 VBMI; the helper's search only BW). The values are those
//! of the one-patch copy and of the scalar reference (tested in `super`).

#![cfg(target_arch = "x86_64")]
#![allow(unsafe_code)]

use super::Messages;
use crate::select::P;

/// Whether the packed kernels take windows of `n` compared bits: at least two patches fit in
/// a vector, and a single bit (`n = 1`, 64 patches) is left to the one-patch copy.
pub(super) fn packs(n: usize) -> bool {
    (2..=32).contains(&n)
}

/// The lane mask of the first `len ≤ 64` lanes.
#[inline(always)]
fn first_lanes(len: usize) -> u64 {
    if len >= 64 {
        u64::MAX
    } else {
        (1u64 << len) - 1
    }
}

/// Powers of 2, a generator of Z_67^*, and their logarithms (`EXP[e] = 2^e`, `LOG[2^e] = e`
/// for `e < 66`; `LOG[0]` is unused), padded to the 128 bytes of a two-source byte permute:
/// for `s, c ≠ 0`, `s·c mod 67 = EXP[(LOG[s] + LOG[c]) mod 66]`, a product in byte lanes.
static LOG_EXP: [[u8; 128]; 2] = {
    let (mut log, mut exp) = ([0u8; 128], [0u8; 128]);
    let (mut x, mut e) = (1u32, 0);
    while e < 66 {
        exp[e] = x as u8;
        log[x as usize] = e as u8;
        x = x * 2 % P;
        e += 1;
    }
    [log, exp]
};

/// Where each lane sits for patches of `n` lanes: its position in its patch, its patch's
/// index in the vector and first lane (byte lanes, for the permutes).
struct Lanes {
    pos: [u8; 64],
    patch: [u8; 64],
    base: [u8; 64],
}

impl Lanes {
    fn new(n: usize) -> Self {
        let per = 64 / n;
        let mut l = Lanes {
            pos: [0; 64],
            patch: [0; 64],
            base: [0; 64],
        };
        for i in 0..64 {
            // Lanes past the last whole patch are never stored: keep them in range.
            let t = (i / n).min(per - 1);
            l.pos[i] = (i - t * n).min(n - 1) as u8;
            l.patch[i] = t as u8;
            l.base[i] = (t * n) as u8;
        }
        l
    }

    /// Lanes at position `≥ k` of their patch.
    fn at_least(&self, k: u8) -> u64 {
        self.pos
            .iter()
            .enumerate()
            .fold(0, |m, (i, &p)| m | (u64::from(p >= k) << i))
    }
}

/// Every patch's message, `⌊64/n⌋` patches a vector (`packs(n)`; `write` checked the sizes),
/// all in byte lanes: the products mod 67 by logarithm tables, the rotation by one byte
/// permute (AVX-512 VBMI; GFNI reverses the bits of the windows).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi,gfni")]
pub(super) fn messages(m: &Messages<'_>, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let (j, n) = (m.j, m.n);
    debug_assert!(packs(n));
    let per = 64 / n;
    let seg = (1u64 << n) - 1;
    let lanes = Lanes::new(n);
    let first = !lanes.at_least(1);
    // Doubling steps of the segmented prefix sum: shift k adds into lanes at position ≥ k.
    let steps = [1u8, 2, 4, 8, 16].map(|k| lanes.at_least(k));
    let zero = _mm512_setzero_si512();
    let p8 = _mm512_set1_epi8(P as i8);
    let m66 = _mm512_set1_epi8(P as i8 - 1);
    let n8 = _mm512_set1_epi8(n as i8);
    let one8 = _mm512_set1_epi8(1);
    let c68 = _mm512_set1_epi8(P as i8 + 1);
    let one_minus = _mm512_set1_epi8(if j == 0 { P as i8 + 1 } else { P as i8 });
    // The all-ones case with β = 1: the client's c is (0, 1, 1, …), the server's 0.
    let special = if j == 0 {
        _mm512_maskz_mov_epi8(!first, one8)
    } else {
        zero
    };
    // SAFETY: each table holds 64 or 128 bytes, one or two vectors.
    let load = |t: &[u8], k: usize| unsafe { _mm512_loadu_si512(t.as_ptr().add(64 * k).cast()) };
    let (log_lo, log_hi) = (load(&LOG_EXP[0], 0), load(&LOG_EXP[0], 1));
    let (exp_lo, exp_hi) = (load(&LOG_EXP[1], 0), load(&LOG_EXP[1], 1));
    let (pos, patch, base) = (
        load(&lanes.pos, 0),
        load(&lanes.patch, 0),
        load(&lanes.base, 0),
    );
    let red8 = |x: __m512i| _mm512_min_epu8(x, _mm512_sub_epi8(x, p8));
    let up16 = |x: __m512i| _mm512_alignr_epi32::<12>(x, zero);
    let up1 = |x: __m512i| _mm512_alignr_epi8::<15>(x, up16(x));
    let up2 = |x: __m512i| _mm512_alignr_epi8::<14>(x, up16(x));
    let up4 = |x: __m512i| _mm512_alignr_epi32::<15>(x, zero);
    let up8 = |x: __m512i| _mm512_alignr_epi32::<14>(x, zero);
    let np = m.r.len();
    let mut g0 = 0;
    while g0 < np {
        let cnt = per.min(np - g0);
        let live = first_lanes(cnt * n);
        let off = g0 * n;
        // SAFETY: `write` checked n bytes per patch in u, s, rho and out and a rotation per
        // patch, and patches g0..g0 + cnt exist; masked loads and stores touch only theirs.
        let (ub, sb, rb, rot) = unsafe {
            (
                _mm512_maskz_loadu_epi8(live, m.u.as_ptr().add(off).cast()),
                _mm512_maskz_loadu_epi8(live, m.s.as_ptr().add(off).cast()),
                _mm512_maskz_loadu_epi8(live, m.rho.as_ptr().add(off).cast()),
                _mm512_maskz_loadu_epi8(first_lanes(cnt), m.rot.as_ptr().add(g0).cast()),
            )
        };
        // The patches' scalars as lane masks: q's bits (lane i ↔ bit n − 1 − i of its
        // patch), β = 1, and β = 1 with r all ones.
        // Without branches: β is a uniform bit, a branch on it would be mispredicted half
        // the time.
        let (mut kq, mut kb, mut ks) = (0u64, 0u64, 0u64);
        for (t, (&r, &beta)) in m.r[g0..g0 + cnt]
            .iter()
            .zip(&m.beta[g0..g0 + cnt])
            .enumerate()
        {
            let sh = t * n;
            let b = u64::from(beta & 1);
            kb |= (seg & b.wrapping_neg()) << sh;
            ks |= (seg & (b & u64::from(r == seg)).wrapping_neg()) << sh;
            // q = r + β; r + 1 = 2^n (the all-ones case) has no bit in the window.
            kq |= (((r + b).reverse_bits() >> (64 - n)) & seg) << sh;
        }
        let qv = _mm512_maskz_mov_epi8(kq, one8);
        let w = _mm512_mask_blend_epi8(kq, ub, red8(_mm512_sub_epi8(one_minus, ub)));
        // inclusive prefix sums within each patch, mod 67, then exclusive
        let step = |acc: __m512i, k: usize, up: __m512i| {
            red8(_mm512_mask_add_epi8(acc, steps[k], acc, up))
        };
        let mut acc = step(w, 0, up1(w));
        if n > 2 {
            acc = step(acc, 1, up2(acc));
        }
        if n > 4 {
            acc = step(acc, 2, up4(acc));
        }
        if n > 8 {
            acc = step(acc, 3, up8(acc));
        }
        if n > 16 {
            acc = step(acc, 4, up16(acc));
        }
        let acc = _mm512_maskz_mov_epi8(steps[0], up1(acc));
        let (b0, b1) = if j == 0 {
            (
                // β = 0: q_i + 68 − u_i ∈ [2, 69]; β = 1: u_i + 1 − q_i ∈ [0, 67]
                red8(_mm512_sub_epi8(_mm512_add_epi8(c68, qv), ub)),
                red8(_mm512_sub_epi8(_mm512_add_epi8(ub, one8), qv)),
            )
        } else {
            // β = 0: 67 − u_i ∈ [1, 67]; β = 1: u_i
            (red8(_mm512_sub_epi8(p8, ub)), ub)
        };
        let c = red8(_mm512_add_epi8(_mm512_mask_blend_epi8(kb, b0, b1), acc));
        let c = _mm512_mask_blend_epi8(ks, c, special);
        // s·c by logarithms (s ≥ 1; c = 0 gives 0), then ± ρ mod 67
        let e = _mm512_add_epi8(
            _mm512_permutex2var_epi8(log_lo, sb, log_hi),
            _mm512_permutex2var_epi8(log_lo, c, log_hi),
        );
        let e = _mm512_min_epu8(e, _mm512_sub_epi8(e, m66));
        let sc = _mm512_maskz_permutex2var_epi8(_mm512_test_epi8_mask(c, c), exp_lo, e, exp_hi);
        let mask = if j == 0 { rb } else { _mm512_sub_epi8(p8, rb) };
        let v = red8(_mm512_add_epi8(sc, mask));
        // out lane o takes lane base + (pos − rot) mod n of its patch
        let rot = _mm512_permutexvar_epi8(patch, rot);
        let t = _mm512_sub_epi8(pos, rot);
        let t = _mm512_mask_add_epi8(t, _mm512_cmplt_epu8_mask(pos, rot), t, n8);
        let bytes = _mm512_permutexvar_epi8(_mm512_add_epi8(t, base), v);
        // SAFETY: as for the loads.
        unsafe { _mm512_mask_storeu_epi8(out.as_mut_ptr().add(off).cast(), live, bytes) };
        g0 += cnt;
    }
}

/// The helper's bit shares for the server, `⌊64/n⌋` patches a vector (`packs(n)`; the
/// caller checked the sizes): each patch's window bits as a lane mask, then
/// `bit + 67 − u₀` reduced by one minimum.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn server_bit_shares(n: usize, windows: &[u64], u: &mut [u8]) {
    use std::arch::x86_64::*;
    debug_assert!(packs(n));
    let per = 64 / n;
    let p8 = _mm512_set1_epi8(P as i8);
    let one8 = _mm512_set1_epi8(1);
    let mut g0 = 0;
    while g0 < windows.len() {
        let cnt = per.min(windows.len() - g0);
        let live = first_lanes(cnt * n);
        // lane i of patch t ↔ bit n − 1 − i of its window
        let bits = windows[g0..g0 + cnt]
            .iter()
            .enumerate()
            .fold(0u64, |k, (t, w)| {
                k | ((w.reverse_bits() >> (64 - n)) << (t * n))
            });
        // SAFETY: n bytes per patch in u; the masked load and store touch patches
        // g0..g0 + cnt only.
        unsafe {
            let at = u.as_mut_ptr().add(g0 * n);
            let u0 = _mm512_maskz_loadu_epi8(live, at.cast());
            let v = _mm512_sub_epi8(_mm512_mask_add_epi8(p8, bits, p8, one8), u0);
            let v = _mm512_min_epu8(v, _mm512_sub_epi8(v, p8));
            _mm512_mask_storeu_epi8(at.cast(), live, v);
        }
        g0 += cnt;
    }
}

/// The helper's search for a zero, `⌊64/n⌋` patches a vector (`packs(n)`; the caller
/// checked the sizes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) fn zero_found(n: usize, d0: &[u8], d1: &[u8], found: &mut [u8]) {
    use std::arch::x86_64::*;
    debug_assert!(packs(n));
    let per = 64 / n;
    let seg = (1u64 << n) - 1;
    let p8 = _mm512_set1_epi8(P as i8);
    let mut g0 = 0;
    while g0 < found.len() {
        let cnt = per.min(found.len() - g0);
        let live = first_lanes(cnt * n);
        // SAFETY: n bytes per patch in d0 and d1; masked loads touch only patches
        // g0..g0 + cnt.
        let t = unsafe {
            _mm512_add_epi8(
                _mm512_maskz_loadu_epi8(live, d0.as_ptr().add(g0 * n).cast()),
                _mm512_maskz_loadu_epi8(live, d1.as_ptr().add(g0 * n).cast()),
            )
        };
        let hit = (_mm512_cmpeq_epi8_mask(t, _mm512_setzero_si512())
            | _mm512_cmpeq_epi8_mask(t, p8))
            & live;
        for (t, f) in found[g0..g0 + cnt].iter_mut().enumerate() {
            *f = u8::from((hit >> (t * n)) & seg != 0);
        }
        g0 += cnt;
    }
}
