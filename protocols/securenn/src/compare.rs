//! The PrivateCompare arithmetic of [`crate::select`] (SecureNN's Algorithm 3, digest §6.10)
//! over Z_67, for many patches at once: each party's masked, rotated message, the helper's
//! bit shares of the compared windows for the server, and its search for a zero.
//!
//! Per patch with public `r` (the `n`-bit window of `z`, bit `i` counted from the most
//! significant), common bit `β`, this party's shares `u_i` of the bits of `x`, common
//! multipliers `s_i ∈ 1..67`, masks `ρ_i` and rotation `rot`, party `j` (client 0, server 1)
//! sends `out[(i + rot) mod n] = s_i·c_i ± ρ_i mod 67` where, with `q = r` (`β = 0`) or
//! `r + 1` (`β = 1`) and `w_l` the share of `x_l ⊕ q_l`:
//! `c_i = q_i − u_i + [j = 0] + Σ_{l<i} w_l` (`β = 0`) or `u_i − q_i + [j = 0] + Σ_{l<i} w_l`
//! (`β = 1`); when `β = 1` and `r` is all ones, the client's `c` is `(0, 1, 1, …)` and the
//! server's 0 (the helper must find a zero).
//!
//! Three compiled copies ([`knapsec_ring::simd::byte_level`]): AVX-512 BW with the `n ≤ 64`
//! values of a patch in the byte lanes of one vector (the prefix sum by six shifted additions
//! reduced mod 67 in 8-bit lanes, the products in 16-bit lanes, the rotation by one
//! two-source permute); and a portable copy (prefix sums without reduction in the dependency
//! chain, the rest in loops the compiler vectorises), compiled plain and with AVX2. Short
//! windows (`2 ≤ n ≤ 32`, the approximate DReLU's) take a fourth, [`packed`]: `⌊64/n⌋`
//! patches in one AVX-512 vector, so that the cost of a patch falls with `n` (the messages in
//! byte lanes throughout, which needs VBMI and GFNI; the bit shares and the search need BW).
//! All give the values of the scalar reference in the tests.

#![allow(unsafe_code)]

#[cfg(target_arch = "x86_64")]
mod packed;

use crate::select::P;
use knapsec_ring::prg::BIT_SPREAD;
use knapsec_ring::simd::ByteLevel;
#[cfg(target_arch = "x86_64")]
use packed::packs;

/// The public inputs and common randomness of a batch of patches.
pub(crate) struct Messages<'a> {
    /// This party: 0 client, 1 server.
    pub j: u32,
    /// Compared bits per patch, `1 ≤ n ≤ 64`.
    pub n: usize,
    /// Per patch: the compared window of `z`.
    pub r: &'a [u64],
    /// Per patch: the common bit `β`.
    pub beta: &'a [u8],
    /// Per patch and bit: this party's share of the bit of `x` (`< 67`).
    pub u: &'a [u8],
    /// Per patch and bit: the common multiplier (`1..67`).
    pub s: &'a [u8],
    /// Per patch and bit: the common mask (`< 67`).
    pub rho: &'a [u8],
    /// Per patch: the common rotation (`< n`).
    pub rot: &'a [u8],
}

impl Messages<'_> {
    /// Writes every patch's message (`n` bytes a patch) into `out`.
    pub fn write(&self, level: ByteLevel, out: &mut [u8]) {
        let np = self.r.len();
        assert!(
            (1..=64).contains(&self.n)
                && self.beta.len() == np
                && self.rot.len() == np
                && [self.u.len(), self.s.len(), self.rho.len(), out.len()] == [np * self.n; 4],
            "PrivateCompare inputs of mismatched sizes"
        );
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `byte_level` (or a test running the levels it lists) found AVX-512 BW
            // and VBMI.
            ByteLevel::Avx512Vbmi if packs(self.n) => unsafe { packed::messages(self, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above (BW at least).
            ByteLevel::Avx512Bw | ByteLevel::Avx512Vbmi => unsafe { messages_avx512(self, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above, AVX2.
            ByteLevel::Avx2 => unsafe { messages_avx2(self, out) },
            _ => messages_portable(self, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn messages_avx2(m: &Messages<'_>, out: &mut [u8]) {
    messages_portable(m, out)
}

#[inline(always)]
fn messages_portable(m: &Messages<'_>, out: &mut [u8]) {
    let n = m.n;
    for (g, o) in out.chunks_exact_mut(n).enumerate() {
        let sl = g * n..(g + 1) * n;
        message_portable(
            m.j,
            m.r[g],
            m.beta[g],
            n,
            &m.u[sl.clone()],
            &m.s[sl.clone()],
            &m.rho[sl],
            m.rot[g] as usize,
            o,
        );
    }
}

/// Bit `i` (from the most significant of `n`) of `q`.
#[inline(always)]
fn bit_msb_first(q: u64, n: usize, i: usize) -> u16 {
    ((q >> (n - 1 - i)) & 1) as u16
}

/// One patch's message, portable.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn message_portable(
    j: u32,
    r: u64,
    beta: u8,
    n: usize,
    u: &[u8],
    s: &[u8],
    rho: &[u8],
    rot: usize,
    out: &mut [u8],
) {
    let (u, s, rho) = (&u[..n], &s[..n], &rho[..n]);
    let mut c = [0u16; 64];
    let all_ones = n == 64 || r == (1u64 << n) - 1;
    if beta == 1 && all_ones {
        if j == 0 {
            c[1..n].fill(1);
        }
    } else {
        let q = if beta == 0 { r } else { r + 1 };
        // Exclusive prefix sums of the shares of x_l ⊕ q_l, not reduced (at most 64·68): one
        // addition in the loop-carried chain.
        let one_minus = if j == 0 { P as u16 + 1 } else { P as u16 };
        let mut acc = [0u16; 64];
        let mut run = 0u16;
        for i in 0..n {
            let ui = u16::from(u[i]);
            acc[i] = run;
            run += if bit_msb_first(q, n, i) == 1 {
                one_minus - ui
            } else {
                ui
            };
        }
        let p = P as u16;
        match (beta, j) {
            (0, 0) => (0..n).for_each(|i| {
                c[i] = (bit_msb_first(q, n, i) + p + 1 - u16::from(u[i]) + acc[i]) % p
            }),
            (0, _) => (0..n).for_each(|i| c[i] = (p - u16::from(u[i]) + acc[i]) % p),
            (_, 0) => (0..n).for_each(|i| {
                c[i] = (u16::from(u[i]) + p + 1 - bit_msb_first(q, n, i) + acc[i]) % p
            }),
            _ => (0..n).for_each(|i| c[i] = (u16::from(u[i]) + acc[i]) % p),
        }
    }
    let mut v = [0u8; 64];
    let p = P as u16;
    if j == 0 {
        for i in 0..n {
            v[i] = ((u16::from(s[i]) * c[i] + u16::from(rho[i])) % p) as u8;
        }
    } else {
        for i in 0..n {
            v[i] = ((u16::from(s[i]) * c[i] + p - u16::from(rho[i])) % p) as u8;
        }
    }
    out[rot..n].copy_from_slice(&v[..n - rot]);
    out[..rot].copy_from_slice(&v[n - rot..n]);
}

/// Lane indices 0..64 as 16-bit values.
#[cfg(target_arch = "x86_64")]
static IOTA16: [u16; 64] = {
    let mut t = [0u16; 64];
    let mut i = 0;
    while i < 64 {
        t[i] = i as u16;
        i += 1;
    }
    t
};

/// The AVX-512 BW copy: one patch in the byte lanes of one vector.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn messages_avx512(m: &Messages<'_>, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let (j, n) = (m.j, m.n);
    let lanes: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let zero = _mm512_setzero_si512();
    let p8 = _mm512_set1_epi8(P as i8);
    let one8 = _mm512_set1_epi8(1);
    let c68 = _mm512_set1_epi8(P as i8 + 1);
    let one_minus = _mm512_set1_epi8(if j == 0 { P as i8 + 1 } else { P as i8 });
    let p16 = _mm512_set1_epi16(P as i16);
    // ⌊x·978/2^16⌋ is ⌊x/67⌋ or one less for x < 2^16·…: the remainder is then below 134.
    let m16 = _mm512_set1_epi16(978);
    let n16 = _mm512_set1_epi16(n as i16);
    // SAFETY: IOTA16 holds 64 u16 = two 64-byte vectors.
    let (iota_lo, iota_hi) = unsafe {
        (
            _mm512_loadu_si512(IOTA16.as_ptr().cast()),
            _mm512_loadu_si512(IOTA16.as_ptr().add(32).cast()),
        )
    };
    // x mod 67 for byte lanes below 134.
    let red8 = |x: __m512i| _mm512_min_epu8(x, _mm512_sub_epi8(x, p8));
    // x mod 67 for 16-bit lanes below 2^16 / 8.
    let red16 = |x: __m512i| {
        let q = _mm512_mulhi_epu16(x, m16);
        let x = _mm512_sub_epi16(x, _mm512_mullo_epi16(q, p16));
        _mm512_min_epu16(x, _mm512_sub_epi16(x, p16))
    };
    // Byte lanes shifted up by k (lane i gets lane i − k, the first k get 0).
    let up16 = |x: __m512i| _mm512_alignr_epi32::<12>(x, zero);
    let up1 = |x: __m512i| _mm512_alignr_epi8::<15>(x, up16(x));
    let up2 = |x: __m512i| _mm512_alignr_epi8::<14>(x, up16(x));
    let up4 = |x: __m512i| _mm512_alignr_epi32::<15>(x, zero);
    let up8 = |x: __m512i| _mm512_alignr_epi32::<14>(x, zero);
    let up32 = |x: __m512i| _mm512_alignr_epi32::<8>(x, zero);
    let widen = |x: __m512i| {
        (
            _mm512_cvtepu8_epi16(_mm512_castsi512_si256(x)),
            _mm512_cvtepu8_epi16(_mm512_extracti64x4_epi64::<1>(x)),
        )
    };
    for g in 0..m.r.len() {
        let base = g * n;
        // SAFETY: `write` checked that u, s, rho and out hold n bytes per patch; masked
        // loads and stores touch only the n lanes of this patch.
        let (ub, sb, rb) = unsafe {
            (
                _mm512_maskz_loadu_epi8(lanes, m.u.as_ptr().add(base).cast()),
                _mm512_maskz_loadu_epi8(lanes, m.s.as_ptr().add(base).cast()),
                _mm512_maskz_loadu_epi8(lanes, m.rho.as_ptr().add(base).cast()),
            )
        };
        let (r, beta) = (m.r[g], m.beta[g]);
        let all_ones = n == 64 || r == (1u64 << n) - 1;
        let c = if beta == 1 && all_ones {
            if j == 0 {
                _mm512_maskz_mov_epi8(lanes & !1, one8)
            } else {
                zero
            }
        } else {
            let q = if beta == 0 { r } else { r + 1 };
            // lane i ↔ bit n − 1 − i of q
            let kq = q.reverse_bits() >> (64 - n);
            let qv = _mm512_maskz_mov_epi8(kq, one8);
            // shares of x_i ⊕ q_i, reduced
            let w = _mm512_mask_blend_epi8(kq, ub, red8(_mm512_sub_epi8(one_minus, ub)));
            // inclusive prefix sums mod 67, then exclusive
            let mut acc = red8(_mm512_add_epi8(w, up1(w)));
            acc = red8(_mm512_add_epi8(acc, up2(acc)));
            acc = red8(_mm512_add_epi8(acc, up4(acc)));
            acc = red8(_mm512_add_epi8(acc, up8(acc)));
            acc = red8(_mm512_add_epi8(acc, up16(acc)));
            acc = red8(_mm512_add_epi8(acc, up32(acc)));
            let acc = up1(acc);
            let b = match (beta, j) {
                // q_i + 68 − u_i ∈ [2, 69]
                (0, 0) => red8(_mm512_sub_epi8(_mm512_add_epi8(c68, qv), ub)),
                // 67 − u_i ∈ [1, 67]
                (0, _) => red8(_mm512_sub_epi8(p8, ub)),
                // u_i + 1 − q_i ∈ [0, 67]
                (_, 0) => red8(_mm512_sub_epi8(_mm512_add_epi8(ub, one8), qv)),
                _ => ub,
            };
            red8(_mm512_add_epi8(b, acc))
        };
        // s·c ± ρ mod 67 in 16-bit lanes (at most 66·66 + 67)
        let (s_lo, s_hi) = widen(sb);
        let (c_lo, c_hi) = widen(c);
        let (r_lo, r_hi) = widen(rb);
        let (mk_lo, mk_hi) = if j == 0 {
            (r_lo, r_hi)
        } else {
            (_mm512_sub_epi16(p16, r_lo), _mm512_sub_epi16(p16, r_hi))
        };
        let v_lo = red16(_mm512_add_epi16(_mm512_mullo_epi16(s_lo, c_lo), mk_lo));
        let v_hi = red16(_mm512_add_epi16(_mm512_mullo_epi16(s_hi, c_hi), mk_hi));
        // out lane o takes lane (o − rot) mod n
        let rotv = _mm512_set1_epi16(m.rot[g] as i16);
        let idx = |iota: __m512i| {
            let t = _mm512_sub_epi16(iota, rotv);
            _mm512_mask_add_epi16(t, _mm512_cmplt_epu16_mask(iota, rotv), t, n16)
        };
        let o_lo = _mm512_permutex2var_epi16(v_lo, idx(iota_lo), v_hi);
        let o_hi = _mm512_permutex2var_epi16(v_lo, idx(iota_hi), v_hi);
        let bytes = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm512_cvtepi16_epi8(o_lo)),
            _mm512_cvtepi16_epi8(o_hi),
        );
        // SAFETY: as for the loads.
        unsafe { _mm512_mask_storeu_epi8(out.as_mut_ptr().add(base).cast(), lanes, bytes) };
    }
}

/// The helper's bit shares for the server, per patch: given each patch's compared window
/// `windows[g]` (bit `i` from the most significant is bit `n − 1 − i` of the value; higher
/// bits are ignored) and, in `u`, the client's shares `u₀ < 67` (`n` per patch, drawn from
/// the client–helper stream), writes the server's `bit − u₀ mod 67` in their place.
pub(crate) fn server_bit_shares(level: ByteLevel, n: usize, windows: &[u64], u: &mut [u8]) {
    assert!(
        (1..=64).contains(&n) && u.len() == windows.len() * n,
        "bit shares of mismatched sizes"
    );
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `byte_level` (or a test running the levels it lists) found AVX-512 BW.
        level if level.has_avx512bw() && packs(n) => unsafe {
            packed::server_bit_shares(n, windows, u)
        },
        _ => server_bit_shares_portable(n, windows, u),
    }
}

/// Writes the low `n` bits of `w` (`1 ≤ n ≤ 64`) to `out[..n]`, one per byte, the most
/// significant first: `out[i]` = bit `n − 1 − i`.
#[inline]
fn window_bits(w: u64, n: usize, out: &mut [u8; 64]) {
    // Bit n − 1 − i moves to bit i.
    let r = if n == 64 { w } else { w << (64 - n) }.reverse_bits();
    for (k, chunk) in out.chunks_exact_mut(8).enumerate().take(n.div_ceil(8)) {
        let byte = (r >> (8 * k)) as u8;
        chunk.copy_from_slice(&BIT_SPREAD[usize::from(byte)].to_le_bytes());
    }
}

fn server_bit_shares_portable(n: usize, windows: &[u64], u: &mut [u8]) {
    let mut bits = [0u8; 64];
    for (&w, u) in windows.iter().zip(u.chunks_exact_mut(n)) {
        window_bits(w, n, &mut bits);
        // u₀ < 67: bit + 67 − u₀ ∈ [1, 68] needs one conditional subtraction, a minimum
        // (below 67 the subtraction wraps above).
        for (a, &bit) in u.iter_mut().zip(&bits[..n]) {
            let v = bit + P as u8 - *a;
            *a = v.min(v.wrapping_sub(P as u8));
        }
    }
}

/// The helper's test per patch: does some position of the two messages sum to 0 mod 67?
/// Both messages must hold values below 67 (checked on receipt), `n` per patch.
pub(crate) fn zero_found(level: ByteLevel, n: usize, d0: &[u8], d1: &[u8], found: &mut [u8]) {
    assert!(
        (1..=64).contains(&n) && d0.len() == found.len() * n && d1.len() == d0.len(),
        "PrivateCompare messages of mismatched sizes"
    );
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `byte_level` (or a test running the levels it lists) found AVX-512 BW.
        level if level.has_avx512bw() && packs(n) => unsafe {
            packed::zero_found(n, d0, d1, found)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        level if level.has_avx512bw() => unsafe { zero_found_avx512(n, d0, d1, found) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, AVX2.
        ByteLevel::Avx2 => unsafe { zero_found_avx2(n, d0, d1, found) },
        _ => zero_found_portable(n, d0, d1, found),
    }
}

#[inline(always)]
fn zero_found_portable(n: usize, d0: &[u8], d1: &[u8], found: &mut [u8]) {
    for ((a, b), f) in d0.chunks_exact(n).zip(d1.chunks_exact(n)).zip(found) {
        // a + b ≤ 132: zero mod 67 means 0 or 67
        let hit = a.iter().zip(b).fold(0u8, |h, (&x, &y)| {
            let t = x + y;
            h | u8::from(t == 0) | u8::from(t == P as u8)
        });
        *f = u8::from(hit != 0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn zero_found_avx2(n: usize, d0: &[u8], d1: &[u8], found: &mut [u8]) {
    zero_found_portable(n, d0, d1, found)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn zero_found_avx512(n: usize, d0: &[u8], d1: &[u8], found: &mut [u8]) {
    use std::arch::x86_64::*;
    let lanes: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let p8 = _mm512_set1_epi8(P as i8);
    for (g, f) in found.iter_mut().enumerate() {
        // SAFETY: `zero_found` checked n bytes per patch; masked loads touch only those.
        let t = unsafe {
            _mm512_add_epi8(
                _mm512_maskz_loadu_epi8(lanes, d0.as_ptr().add(g * n).cast()),
                _mm512_maskz_loadu_epi8(lanes, d1.as_ptr().add(g * n).cast()),
            )
        };
        let hit = (_mm512_cmpeq_epi8_mask(t, _mm512_setzero_si512())
            | _mm512_cmpeq_epi8_mask(t, p8))
            & lanes;
        *f = u8::from(hit != 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_ring::Prg;
    use knapsec_ring::simd::available_levels;

    /// The message of one patch as first written (one bit after the other, reducing as it
    /// goes): the reference every copy must equal.
    #[allow(clippy::too_many_arguments)]
    fn message_reference(
        j: u32,
        r: u64,
        beta: u8,
        n: usize,
        u: &[u8],
        s: &[u8],
        rho: &[u8],
        rot: u8,
        out: &mut [u8],
    ) {
        let all_ones = n == 64 || r == (1u64 << n) - 1;
        let mut c = [0u32; 64];
        if beta == 1 && all_ones {
            if j == 0 {
                c[..n].fill(1);
                c[0] = 0;
            }
        } else {
            let q = if beta == 0 { r } else { r + 1 };
            let mut acc = 0u32;
            for i in 0..n {
                let qi = ((q >> (n - 1 - i)) & 1) as u32;
                let ui = u32::from(u[i]);
                let ci = if beta == 0 {
                    if j == 0 {
                        qi + 1 + (P - ui) + acc
                    } else {
                        (P - ui) + acc
                    }
                } else if j == 0 {
                    ui + (P - qi) + 1 + acc
                } else {
                    ui + acc
                };
                c[i] = ci % P;
                let xor = if qi == 0 {
                    ui
                } else if j == 0 {
                    1 + P - ui
                } else {
                    P - ui
                };
                acc = (acc + xor) % P;
            }
        }
        for i in 0..n {
            let mask = if j == 0 {
                u32::from(rho[i])
            } else {
                P - u32::from(rho[i])
            };
            out[(i + rot as usize) % n] = ((u32::from(s[i]) * c[i] + mask) % P) as u8;
        }
    }

    /// Inputs of a batch of patches.
    struct Inputs {
        r: Vec<u64>,
        beta: Vec<u8>,
        u: Vec<u8>,
        s: Vec<u8>,
        rho: Vec<u8>,
        rot: Vec<u8>,
    }

    /// Random inputs for `np` patches of `n` bits, with all-ones and zero windows mixed in.
    fn inputs(n: usize, np: usize, seed: u64) -> Inputs {
        let mut prg = Prg::with_stream(&[3; 32], "compare-test", seed);
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let r: Vec<u64> = (0..np)
            .map(|g| match g % 7 {
                0 => mask,
                1 => 0,
                2 => mask - 1,
                _ => prg.next_u64() & mask,
            })
            .collect();
        let beta = prg.bits(np);
        let u = prg.mod_p(np * n, P as u8).unwrap();
        let s = prg
            .mod_p(np * n, (P - 1) as u8)
            .unwrap()
            .into_iter()
            .map(|v| v + 1)
            .collect();
        let rho = prg.mod_p(np * n, P as u8).unwrap();
        let rot = (0..np)
            .map(|_| prg.below(n as u64).unwrap() as u8)
            .collect();
        Inputs {
            r,
            beta,
            u,
            s,
            rho,
            rot,
        }
    }

    #[test]
    fn every_level_equals_the_reference() {
        for n in [
            1usize, 2, 3, 5, 7, 9, 11, 12, 13, 15, 16, 17, 21, 31, 32, 33, 47, 63, 64,
        ] {
            let np = 200;
            let Inputs {
                r,
                beta,
                u,
                s,
                rho,
                rot,
            } = inputs(n, np, n as u64);
            for j in [0u32, 1] {
                let mut want = vec![0u8; np * n];
                for g in 0..np {
                    let sl = g * n..(g + 1) * n;
                    message_reference(
                        j,
                        r[g],
                        beta[g],
                        n,
                        &u[sl.clone()],
                        &s[sl.clone()],
                        &rho[sl.clone()],
                        rot[g],
                        &mut want[sl],
                    );
                }
                let m = Messages {
                    j,
                    n,
                    r: &r,
                    beta: &beta,
                    u: &u,
                    s: &s,
                    rho: &rho,
                    rot: &rot,
                };
                for level in available_levels() {
                    let mut got = vec![0u8; np * n];
                    m.write(level, &mut got);
                    assert_eq!(got, want, "{level:?} n {n} j {j}");
                }
            }
        }
    }

    #[test]
    fn window_bits_are_the_bits_from_the_most_significant() {
        let mut prg = Prg::new(&[7; 32], "bits");
        let mut out = [0u8; 64];
        for n in 1..=64 {
            for _ in 0..20 {
                let w = prg.next_u64();
                window_bits(w, n, &mut out);
                for (i, &b) in out[..n].iter().enumerate() {
                    assert_eq!(u64::from(b), (w >> (n - 1 - i)) & 1, "n {n} i {i}");
                }
            }
        }
    }

    #[test]
    fn every_level_makes_the_same_bit_shares() {
        for n in [1usize, 2, 3, 5, 8, 13, 16, 17, 31, 32, 33, 63, 64] {
            let np = 150;
            let mut prg = Prg::with_stream(&[5; 32], "bit-shares", n as u64);
            let windows: Vec<u64> = (0..np).map(|_| prg.next_u64()).collect();
            let u0 = prg.mod_p(np * n, P as u8).unwrap();
            for level in available_levels() {
                let mut u1 = u0.clone();
                server_bit_shares(level, n, &windows, &mut u1);
                for (g, w) in windows.iter().enumerate() {
                    for i in 0..n {
                        let bit = ((w >> (n - 1 - i)) & 1) as u32;
                        let k = g * n + i;
                        assert_eq!(
                            (u32::from(u0[k]) + u32::from(u1[k])) % P,
                            bit,
                            "{level:?} n {n} patch {g} bit {i}"
                        );
                        assert!(u32::from(u1[k]) < P);
                    }
                }
            }
        }
    }

    #[test]
    fn the_helper_finds_exactly_the_zeros() {
        for n in [1usize, 2, 5, 7, 13, 21, 32, 33, 63, 64] {
            let np = 300;
            let mut prg = Prg::with_stream(&[4; 32], "zero-found", n as u64);
            let d0 = prg.mod_p(np * n, P as u8).unwrap();
            // d1 = −d0 at one position of some patches, random elsewhere
            let mut d1 = prg.mod_p(np * n, P as u8).unwrap();
            for g in 0..np {
                for i in 0..n {
                    let k = g * n + i;
                    if (d0[k] + d1[k]).is_multiple_of(P as u8) {
                        d1[k] = (d1[k] + 1) % P as u8;
                    }
                }
                if g % 3 == 0 {
                    let k = g * n + (g / 3) % n;
                    d1[k] = (P as u8 - d0[k]) % P as u8;
                }
            }
            let want: Vec<u8> = (0..np).map(|g| u8::from(g % 3 == 0)).collect();
            for level in available_levels() {
                let mut got = vec![9u8; np];
                zero_found(level, n, &d0, &d1, &mut got);
                assert_eq!(got, want, "{level:?} n {n}");
            }
        }
    }
}
