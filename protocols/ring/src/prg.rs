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

use crate::error::{Result, RingError};
use crate::tensor::RingTensor;
use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};

type Cipher = ctr::Ctr64LE<Aes128>;

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
        let rest = &mut out[from_buf..];
        if rest.is_empty() {
            return;
        }
        if rest.len() >= BUF {
            rest.fill(0);
            self.cipher.apply_keystream(rest);
        } else {
            self.refill();
            rest.copy_from_slice(&self.buf[..rest.len()]);
            self.pos = rest.len();
        }
    }

    fn refill(&mut self) {
        self.buf.fill(0);
        self.cipher.apply_keystream(&mut self.buf[..]);
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
        let mut v = vec![0u64; n];
        self.fill_u64(&mut v);
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
        (0..n).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect()
    }

    /// `n` uniform values in `0..p` (`2 ≤ p ≤ 255`, e.g. 67 for PrivateCompare), unbiased:
    /// bytes at or above the largest multiple of `p` are rejected.
    pub fn mod_p(&mut self, n: usize, p: u8) -> Result<Vec<u8>> {
        if p < 2 {
            return Err(RingError::invalid(
                "mod_p",
                format!("modulus {p} must be at least 2"),
            ));
        }
        let limit = 256 - (256 % u32::from(p));
        // Byte → residue, or 255 for a rejected byte.
        let table: [u8; 256] = std::array::from_fn(|b| {
            if (b as u32) < limit {
                (b as u32 % u32::from(p)) as u8
            } else {
                255
            }
        });
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            if self.pos == BUF {
                self.refill();
            }
            let mut used = 0;
            for &b in &self.buf[self.pos..] {
                used += 1;
                let r = table[b as usize];
                if r != 255 {
                    out.push(r);
                    if out.len() == n {
                        break;
                    }
                }
            }
            self.pos += used;
        }
        Ok(out)
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
    fn stream_is_independent_of_draw_sizes() {
        let whole = Prg::new(&K, "x").u64s(3000);
        let mut p = Prg::new(&K, "x");
        let mut parts = p.u64s(1);
        parts.extend(p.u64s(700));
        parts.extend(p.u64s(2000));
        parts.push(p.next_u64());
        parts.extend(p.u64s(298));
        assert_eq!(parts, whole);
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
