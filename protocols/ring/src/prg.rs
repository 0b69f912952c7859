//! Cryptographic pseudo-random generators for correlated randomness (digest §6.3, and the fix
//! of §10.12: no fixed seeds, a real stream cipher).
//!
//! A [`Prg`] is AES-128 in counter mode (crates `aes` + `ctr`; AES-NI is detected at run time
//! by the `aes` crate). Its key and nonce are derived from a 32-byte session key (agreed per
//! session, see [`knapsec_core::backend::SessionKeys`]) and a domain-separation label plus a
//! stream id, with BLAKE3 in keyed mode:
//! `blake3_keyed(session_key, "knapsec-prg-v1" ‖ len(label) ‖ label ‖ stream)` → 16-byte AES
//! key ‖ 16-byte nonce. Two parties holding the same session key draw identical values as long
//! as they use the same label and stream id and make the same sequence of draws; the byte
//! stream does not depend on how draws are split (a draw of 2n `u64` equals two draws of n).
//!
//! Draws: ring elements ([`Prg::fill_u64`], [`Prg::ring`]), bits, values modulo a small prime
//! without bias (rejection sampling of bytes, [`Prg::mod_p`]), uniform integers below a bound
//! (rejection, [`Prg::below`]) and random permutations (Fisher–Yates, [`Prg::permutation`]).
//! Bulk draws run the cipher over whole buffers (eight blocks in flight), never per element.

#![allow(unsafe_code)]

use crate::error::{Result, RingError};
use crate::simd::ByteLevel;
use crate::tensor::RingTensor;
use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipherCore};

/// Byte `j` of entry `b` is bit `j` of `b`: eight bits spread to eight bytes by one lookup.
pub const BIT_SPREAD: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            t[b] |= (((b >> j) & 1) as u64) << (8 * j);
            j += 1;
        }
        b += 1;
    }
    t
};

/// AES-128-CTR with a 64-bit little-endian counter (`ctr::Ctr64LE`'s keystream), driven
/// block-wise: keystream blocks are written over a buffer, not XORed into a cleared one.
type Cipher = ctr::CtrCore<Aes128, ctr::flavors::Ctr64LE>;

/// One keystream block.
type Block = ctr::cipher::Block<Cipher>;

const _: () = assert!(std::mem::size_of::<Block>() == 16 && std::mem::align_of::<Block>() == 1);

/// The whole 16-byte blocks at the start of `bytes`.
fn as_blocks(bytes: &mut [u8]) -> &mut [Block] {
    // SAFETY: a block is 16 bytes with alignment 1 (asserted above), so the first
    // `len / 16 · 16` bytes are exactly that many blocks, borrowed mutably once.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<Block>(), bytes.len() / 16) }
}

/// Size of the internal buffer for small draws.
const BUF: usize = 4096;

/// A keyed, domain-separated AES-CTR stream.
pub struct Prg {
    cipher: Cipher,
    /// Keystream bytes already generated for small draws; `buf[pos..]` is unused.
    buf: Box<[u8; BUF]>,
    pos: usize,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prg { .. }")
    }
}

impl Prg {
    /// The stream `label` under `key`.
    pub fn new(key: &[u8; 32], label: &str) -> Self {
        Self::with_stream(key, label, 0)
    }

    /// The stream (`label`, `stream`) under `key`: distinct labels or stream ids give
    /// independent streams.
    pub fn with_stream(key: &[u8; 32], label: &str, stream: u64) -> Self {
        let mut h = blake3::Hasher::new_keyed(key);
        h.update(b"knapsec-prg-v1");
        h.update(&(label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update(&stream.to_le_bytes());
        let derived = h.finalize();
        let bytes = derived.as_bytes();
        let cipher = Cipher::new(bytes[..16].into(), bytes[16..].into());
        Prg {
            cipher,
            buf: Box::new([0; BUF]),
            pos: BUF,
        }
    }

    /// Fills `out` with keystream bytes.
    pub fn fill_bytes(&mut self, out: &mut [u8]) {
        // Serve from the buffer first so that the stream is independent of draw sizes.
        let from_buf = out.len().min(BUF - self.pos);
        out[..from_buf].copy_from_slice(&self.buf[self.pos..self.pos + from_buf]);
        self.pos += from_buf;
        let mut rest = &mut out[from_buf..];
        if rest.len() >= BUF {
            // Whole blocks straight into `out`; a partial last block comes from the buffer.
            let whole = rest.len() / 16 * 16;
            self.cipher
                .write_keystream_blocks(as_blocks(&mut rest[..whole]));
            rest = &mut rest[whole..];
        }
        if !rest.is_empty() {
            self.refill();
            rest.copy_from_slice(&self.buf[..rest.len()]);
            self.pos = rest.len();
        }
    }

    fn refill(&mut self) {
        self.cipher
            .write_keystream_blocks(as_blocks(&mut self.buf[..]));
        self.pos = 0;
    }

    /// Fills `out` with uniform ring elements.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        self.fill_bytes(bytemuck::cast_slice_mut(out));
        if cfg!(target_endian = "big") {
            out.iter_mut().for_each(|v| *v = u64::from_le(*v));
        }
    }

    /// One uniform ring element.
    pub fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    /// `n` uniform ring elements.
    pub fn u64s(&mut self, n: usize) -> Vec<u64> {
        // The keystream is written over the allocation (a zeroed one may come from fresh
        // zero pages without a pass over memory).
        let mut v = vec![0u64; n];
        self.fill_bytes(bytemuck::cast_slice_mut(&mut v));
        if cfg!(target_endian = "big") {
            v.iter_mut().for_each(|x| *x = u64::from_le(*x));
        }
        v
    }

    /// A tensor of uniform ring elements.
    pub fn ring(&mut self, dims: &[usize]) -> RingTensor {
        let n = dims.iter().product();
        RingTensor::from_vec(dims, self.u64s(n)).expect("length matches dims")
    }

    /// `n` uniform bits (each `0` or `1`), eight per keystream byte.
    pub fn bits(&mut self, n: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; n.div_ceil(8)];
        self.fill_bytes(&mut bytes);
        // Bit i of the keystream (bit i % 8 of byte i / 8) is value i: a byte's eight bits by
        // one table lookup.
        let mut out = Vec::with_capacity(bytes.len() * 8);
        for &b in &bytes {
            out.extend_from_slice(&BIT_SPREAD[usize::from(b)].to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// `n` uniform values in `0..p` (`2 ≤ p ≤ 255`, e.g. 67 for PrivateCompare), unbiased:
    /// bytes at or above the largest multiple of `p` are rejected.
    pub fn mod_p(&mut self, n: usize, p: u8) -> Result<Vec<u8>> {
        let mut out = vec![0u8; n];
        self.mod_p_into(&mut out, p)?;
        Ok(out)
    }

    /// Fills `out` with uniform values in `0..p` (`2 ≤ p ≤ 255`), unbiased: keystream bytes
    /// at or above the largest multiple of `p` below 256 are rejected, the others reduced
    /// modulo `p`, in stream order. Exactly the bytes up to the last accepted one are consumed,
    /// so the values and the rest of the stream do not depend on how draws are split. The
    /// bytes are screened and reduced in vector lanes where the CPU has them
    /// ([`crate::simd::byte_level`]); every level gives the same values.
    pub fn mod_p_into(&mut self, out: &mut [u8], p: u8) -> Result<()> {
        self.mod_p_into_at(crate::simd::byte_level(), out, p)
    }

    /// [`Prg::mod_p_into`] with the kernels of `level` (which the CPU must have).
    pub(crate) fn mod_p_into_at(&mut self, level: ByteLevel, out: &mut [u8], p: u8) -> Result<()> {
        if p < 2 {
            return Err(RingError::invalid(
                "mod_p",
                format!("modulus {p} must be at least 2"),
            ));
        }
        let rule = Rejection::new(p);
        let mut k = 0;
        while k < out.len() {
            if self.pos == BUF {
                self.refill();
            }
            let (used, made) = rule.run(level, &self.buf[self.pos..], &mut out[k..]);
            self.pos += used;
            k += made;
        }
        Ok(())
    }

    /// A uniform integer in `0..bound` (`bound ≥ 1`), by rejection (no modulo bias).
    pub fn below(&mut self, bound: u64) -> Result<u64> {
        if bound == 0 {
            return Err(RingError::invalid("below", "bound must be at least 1"));
        }
        // Reject the top `2^64 mod bound` values.
        let zone = u64::MAX - (u64::MAX - bound + 1) % bound;
        loop {
            let v = self.next_u64();
            if v <= zone {
                return Ok(v % bound);
            }
        }
    }

    /// A uniform random permutation of `0..n` (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        self.shuffle(&mut p);
        p
    }

    /// Shuffles `items` uniformly (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1).expect("bound ≥ 1") as usize;
            items.swap(i, j);
        }
    }
}

/// Marks a rejected byte in [`Rejection::table`] (never a residue: `p ≤ 255`).
const REJECT: u8 = 255;

/// Rejection sampling of keystream bytes modulo a small `p`.
struct Rejection {
    p: u8,
    /// Bytes below `limit = 256 − 256 mod p` are accepted (256: all of them).
    limit: u16,
    /// Byte → residue, or [`REJECT`].
    table: [u8; 256],
}

impl Rejection {
    fn new(p: u8) -> Self {
        let limit = 256 - 256 % u16::from(p);
        let table = std::array::from_fn(|b| {
            if (b as u16) < limit {
                (b as u16 % u16::from(p)) as u8
            } else {
                REJECT
            }
        });
        Rejection { p, limit, table }
    }

    /// Conditional subtractions of `p` that reduce an accepted byte (`limit / p − 1`).
    fn steps(&self) -> u16 {
        self.limit / u16::from(self.p) - 1
    }

    /// Screens `src` in order into `dst` until `dst` is full or `src` is used up; returns
    /// (bytes consumed, values made). When `dst` fills, the last byte consumed is the
    /// accepted one that filled it.
    fn run(&self, level: ByteLevel, src: &[u8], dst: &mut [u8]) -> (usize, usize) {
        let (mut i, mut m) = (0, 0);
        #[cfg(target_arch = "x86_64")]
        {
            // The vector kernels reduce by conditional subtraction: only for p above 255/4.
            if self.steps() <= 3 {
                if level.has_avx512bw() {
                    // SAFETY: `byte_level` (or the caller's test) found AVX-512 F/BW/VL.
                    (i, m) = unsafe { reject_avx512(self.p, self.limit, self.steps(), src, dst) };
                } else if level == ByteLevel::Avx2 {
                    // SAFETY: `byte_level` (or the caller's test) found AVX2.
                    (i, m) = unsafe { reject_avx2(self.p, self.limit, self.steps(), src, dst) };
                }
            }
        }
        let _ = level;
        // Branch-free tail: a chunk of `c ≤ dst.len() − m` bytes makes at most `c` values, so
        // it can write each byte's residue at the next free place and keep it only if accepted.
        while i < src.len() && m < dst.len() {
            let c = (src.len() - i).min(dst.len() - m);
            let out = &mut dst[m..m + c];
            let mut k = 0;
            for &b in &src[i..i + c] {
                let r = self.table[b as usize];
                out[k] = r;
                k += usize::from(r != REJECT);
            }
            i += c;
            m += k;
        }
        (i, m)
    }
}

/// The AVX-512 screen: 64 bytes at a time while `src` and `dst` both have 64 left (so the
/// 64 values a block can make always fit). Accepted lanes come from one unsigned compare,
/// residues from `steps` masked subtractions, and each 16-byte quarter is packed by
/// `vpcompressd` on 32-bit lanes (AVX-512 VBMI2's byte compress is not assumed).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn reject_avx512(p: u8, limit: u16, steps: u16, src: &[u8], dst: &mut [u8]) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (mut i, mut m) = (0usize, 0usize);
    let vp = _mm512_set1_epi8(p as i8);
    let vlim = _mm512_set1_epi8(limit.min(255) as u8 as i8);
    while src.len() - i >= 64 && dst.len() - m >= 64 {
        // SAFETY: 64 bytes of `src` from `i` are in bounds (loop condition).
        let b = unsafe { _mm512_loadu_si512(src.as_ptr().add(i).cast()) };
        let keep: u64 = if limit == 256 {
            u64::MAX
        } else {
            _mm512_cmplt_epu8_mask(b, vlim)
        };
        let mut r = b;
        for _ in 0..steps {
            let ge = _mm512_cmpge_epu8_mask(r, vp);
            r = _mm512_mask_sub_epi8(r, ge, r, vp);
        }
        let quarters = [
            _mm512_extracti32x4_epi32::<0>(r),
            _mm512_extracti32x4_epi32::<1>(r),
            _mm512_extracti32x4_epi32::<2>(r),
            _mm512_extracti32x4_epi32::<3>(r),
        ];
        for (q, part) in quarters.into_iter().enumerate() {
            let mk = (keep >> (16 * q)) as u16;
            let packed =
                _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(mk, _mm512_cvtepu8_epi32(part)));
            // SAFETY: m ≤ (values made so far in this block) ≤ 48 here and 64 bytes of `dst`
            // from the block's start are free, so the 16 bytes written are in bounds.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().add(m).cast(), packed) };
            m += mk.count_ones() as usize;
        }
        i += 64;
    }
    (i, m)
}

/// For each 8-bit mask, the `pshufb` indices of its set bits in order (then `0x80`: zero).
const COMPACT8: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut mask = 0;
    while mask < 256 {
        let mut v = 0x8080_8080_8080_8080u64;
        let (mut k, mut b) = (0, 0);
        while b < 8 {
            if (mask >> b) & 1 == 1 {
                v = (v & !(0xff << (8 * k))) | ((b as u64) << (8 * k));
                k += 1;
            }
            b += 1;
        }
        t[mask] = v;
        mask += 1;
    }
    t
};

/// The AVX2 screen: 32 bytes at a time while `src` and `dst` both have 32 left; each group of
/// 8 bytes is packed with `pshufb` and an index table ([`COMPACT8`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn reject_avx2(p: u8, limit: u16, steps: u16, src: &[u8], dst: &mut [u8]) -> (usize, usize) {
    use std::arch::x86_64::*;
    let (mut i, mut m) = (0usize, 0usize);
    let vp = _mm256_set1_epi8(p as i8);
    let vlast = _mm256_set1_epi8((limit - 1).min(255) as u8 as i8);
    let eight = _mm_set1_epi64x(0x0808_0808_0808_0808);
    while src.len() - i >= 32 && dst.len() - m >= 32 {
        // SAFETY: 32 bytes of `src` from `i` are in bounds (loop condition).
        let b = unsafe { _mm256_loadu_si256(src.as_ptr().add(i).cast()) };
        // b < limit ⇔ max(b, limit − 1) = limit − 1 (unsigned)
        let keep = if limit == 256 {
            u32::MAX
        } else {
            _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(b, vlast), vlast)) as u32
        };
        let mut r = b;
        for _ in 0..steps {
            // r ≥ p ⇔ max(r, p) = r
            let ge = _mm256_cmpeq_epi8(_mm256_max_epu8(r, vp), r);
            r = _mm256_sub_epi8(r, _mm256_and_si256(ge, vp));
        }
        let halves = [_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r)];
        for (h, half) in halves.into_iter().enumerate() {
            let bits = keep >> (16 * h);
            let (m0, m1) = ((bits & 0xff) as usize, ((bits >> 8) & 0xff) as usize);
            let idx = _mm_add_epi8(
                _mm_set_epi64x(COMPACT8[m1] as i64, COMPACT8[m0] as i64),
                _mm_unpackhi_epi64(_mm_setzero_si128(), eight),
            );
            let sh = _mm_shuffle_epi8(half, idx);
            // SAFETY: m ≤ 24 within the block and 32 bytes of `dst` from its start are free.
            unsafe { _mm_storel_epi64(dst.as_mut_ptr().add(m).cast(), sh) };
            m += m0.count_ones() as usize;
            // SAFETY: as above.
            unsafe { _mm_storel_epi64(dst.as_mut_ptr().add(m).cast(), _mm_unpackhi_epi64(sh, sh)) };
            m += m1.count_ones() as usize;
        }
        i += 32;
    }
    (i, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7; 32];

    #[test]
    fn same_key_label_stream_agree_and_others_differ() {
        let a = Prg::new(&K, "cs/input").u64s(100);
        assert_eq!(a, Prg::new(&K, "cs/input").u64s(100));
        assert_ne!(a, Prg::new(&K, "cs/inputs").u64s(100));
        assert_ne!(a, Prg::with_stream(&K, "cs/input", 1).u64s(100));
        assert_ne!(a, Prg::new(&[8; 32], "cs/input").u64s(100));
    }

    #[test]
    fn the_keystream_is_aes_128_ctr64le() {
        use ctr::cipher::StreamCipher;
        let mut h = blake3::Hasher::new_keyed(&K);
        h.update(b"knapsec-prg-v1");
        h.update(&1u64.to_le_bytes());
        h.update(b"x");
        h.update(&0u64.to_le_bytes());
        let d = h.finalize();
        let mut want = vec![0u8; 3 * BUF + 100];
        ctr::Ctr64LE::<Aes128>::new(d.as_bytes()[..16].into(), d.as_bytes()[16..].into())
            .apply_keystream(&mut want);
        // draws of every size, past the buffer and straight into the output, unaligned
        for split in [[1usize, 5000, 17], [4096, 4097, 3], [15, 33, 8200]] {
            let mut p = Prg::new(&K, "x");
            let mut got = vec![0xA5u8; want.len()];
            let (a, rest) = got.split_at_mut(split[0]);
            let (b, rest) = rest.split_at_mut(split[1]);
            let (c, d) = rest.split_at_mut(split[2]);
            for part in [a, b, c, d] {
                p.fill_bytes(part);
            }
            assert_eq!(got, want, "{split:?}");
        }
    }

    #[test]
    fn stream_is_independent_of_draw_sizes() {
        let whole = Prg::new(&K, "x").u64s(3000);
        let mut p = Prg::new(&K, "x");
        let mut parts = p.u64s(1);
        parts.extend(p.u64s(700));
        parts.extend(p.u64s(2000));
        parts.push(p.next_u64());
        parts.extend(p.u64s(298));
        assert_eq!(parts, whole);
        // a buffer that held other values gets the same stream as a fresh one
        let mut reused = vec![0xAAAA_AAAA_AAAA_AAAAu64; 3000];
        Prg::new(&K, "x").fill_u64(&mut reused);
        assert_eq!(reused, whole);
    }

    #[test]
    fn bits_are_the_keystream_bits_in_order() {
        for n in [0usize, 1, 7, 8, 9, 63, 1000] {
            let bits = Prg::new(&[6; 32], "bits-order").bits(n);
            let mut bytes = vec![0u8; n.div_ceil(8)];
            Prg::new(&[6; 32], "bits-order").fill_bytes(&mut bytes);
            let want: Vec<u8> = (0..n).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect();
            assert_eq!(bits, want, "n {n}");
        }
    }

    #[test]
    fn bits_and_mod_p_are_in_range_and_balanced() {
        let mut p = Prg::new(&K, "b");
        let bits = p.bits(100_000);
        assert!(bits.iter().all(|&b| b <= 1));
        let ones: usize = bits.iter().map(|&b| b as usize).sum();
        assert!((49_000..51_000).contains(&ones), "{ones}");
        let v = p.mod_p(67 * 3000, 67).unwrap();
        let mut counts = [0usize; 67];
        v.iter().for_each(|&x| counts[x as usize] += 1);
        // Each residue expects 3000; 5 sigma ≈ 270.
        assert!(
            counts.iter().all(|&c| (2700..3300).contains(&c)),
            "{counts:?}"
        );
        assert!(p.mod_p(3, 1).is_err());
        // Rejection sampling consumes exactly the bytes up to the last accepted one, so draws
        // split in two give the same values as one draw.
        let whole = Prg::new(&K, "m").mod_p(10_000, 67).unwrap();
        let mut q = Prg::new(&K, "m");
        let mut parts = q.mod_p(3_333, 67).unwrap();
        parts.extend(q.mod_p(6_667, 67).unwrap());
        assert_eq!(parts, whole);
    }

    /// The draw as first written: one keystream byte after the other, rejected at or above
    /// the largest multiple of `p`.
    fn mod_p_reference(prg: &mut Prg, n: usize, p: u8) -> Vec<u8> {
        let limit = 256 - 256 % u32::from(p);
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let mut b = [0u8; 1];
            prg.fill_bytes(&mut b);
            if u32::from(b[0]) < limit {
                out.push((u32::from(b[0]) % u32::from(p)) as u8);
            }
        }
        out
    }

    #[test]
    fn mod_p_kernels_equal_the_byte_by_byte_draw() {
        for level in crate::simd::available_levels() {
            for p in [2u8, 3, 7, 52, 64, 66, 67, 128, 200, 255] {
                for n in [
                    0usize, 1, 31, 32, 63, 64, 65, 1000, 4095, 4096, 5000, 70_000,
                ] {
                    let mut a = Prg::new(&K, "mod-p");
                    let mut b = Prg::new(&K, "mod-p");
                    // an odd offset so that draws start mid-buffer
                    a.fill_bytes(&mut [0u8; 13]);
                    b.fill_bytes(&mut [0u8; 13]);
                    let mut got = vec![0u8; n];
                    a.mod_p_into_at(level, &mut got, p).unwrap();
                    assert_eq!(got, mod_p_reference(&mut b, n, p), "{level:?} p {p} n {n}");
                    // the stream continues after the last accepted byte
                    assert_eq!(a.next_u64(), b.next_u64(), "{level:?} p {p} n {n}");
                }
            }
        }
    }

    /// Pearson's chi-square statistic of `values` over `0..p`.
    fn chi_square(values: &[u8], p: usize) -> f64 {
        let mut counts = vec![0u64; p];
        values.iter().for_each(|&v| counts[v as usize] += 1);
        let e = values.len() as f64 / p as f64;
        counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
    }

    #[test]
    fn mod_p_passes_a_chi_square_test() {
        // 66 degrees of freedom (p = 67) and 65 (p = 66): the 1e-4 quantiles of the chi-square
        // distribution are about 31 and 118 (Wilson–Hilferty), so with this fixed key a
        // statistic outside (31, 118) means a biased draw, not bad luck.
        for level in crate::simd::available_levels() {
            for p in [66u8, 67] {
                let mut prg = Prg::new(&K, "chi-square");
                let mut v = vec![0u8; 67 * 20_000];
                prg.mod_p_into_at(level, &mut v, p).unwrap();
                let chi = chi_square(&v, p as usize);
                assert!((31.0..118.0).contains(&chi), "{level:?} p {p}: {chi}");
                // pairs of consecutive values (4422 or 4488 cells, 1e-4 band ±3.72σ)
                let pairs: Vec<u16> = v
                    .chunks_exact(2)
                    .map(|c| u16::from(c[0]) * u16::from(p) + u16::from(c[1]))
                    .collect();
                let cells = usize::from(p) * usize::from(p);
                let mut counts = vec![0u64; cells];
                pairs.iter().for_each(|&x| counts[x as usize] += 1);
                let e = pairs.len() as f64 / cells as f64;
                let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
                let dof = (cells - 1) as f64;
                let band = 3.72 * (2.0 * dof).sqrt();
                assert!((chi2 - dof).abs() < band, "{level:?} p {p} pairs: {chi2}");
            }
        }
    }

    #[test]
    fn permutations_are_permutations() {
        let mut p = Prg::new(&K, "perm");
        let perm = p.permutation(1000);
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(perm, (0..1000).collect::<Vec<_>>());
        assert!(p.below(0).is_err());
        assert!((0..1000).all(|_| p.below(3).unwrap() < 3));
    }

    #[test]
    fn ring_elements_cover_the_high_bits() {
        let v = Prg::new(&K, "r").u64s(10_000);
        let msb: usize = v.iter().map(|&x| (x >> 63) as usize).sum();
        assert!((4_700..5_300).contains(&msb), "{msb}");
    }
}
