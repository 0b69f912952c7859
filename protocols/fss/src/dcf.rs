//! Distributed comparison functions (DCF): two keys `k₀`, `k₁` of the function
//! `f_α(y) = [y < α]` on `n`-bit inputs, such that `Eval(k₀, y) ⊕ Eval(k₁, y) = f_α(y)` for
//! every `y`, while each key alone reveals nothing about `α` (Boyle, Chandran, Gilboa, Gupta,
//! Ishai, Kumar, Rathee, "Function Secret Sharing for Mixed-Mode and Fixed-Point Secure
//! Computation", Eurocrypt 2021, Fig. 3, with the output group `Z₂`; the tree of Boyle,
//! Gilboa, Ishai, "Function Secret Sharing: Improvements and Extensions", CCS 2016).
//!
//! **PRG.** `G(s, side) = AES_K(s ⊕ c_side) ⊕ s ⊕ c_side` with one fixed public AES-128 key
//! `K` and two public constants `c_L`, `c_R` (fixed-key AES in the Matyas–Meyer–Oseas mode, as
//! in the BGI and Orca implementations; the `aes` crate uses AES-NI where the CPU has it).
//! Of the 128 output bits, bit 0 is the control bit `t`, bit 1 the value bit `v` and the other
//! 125 (bits 0–2 cleared) the child seed. Evaluation expands only the side the input bit
//! picks (one AES block per level); generation expands both sides of both seeds (four).
//! Many keys are generated and evaluated at once, level by level, so that the cipher runs on
//! whole batches of blocks (eight in flight with AES-NI).
//!
//! **Key.** A root seed (each party's comes from the PRG it shares with the dealer, so it is
//! never sent), one 128-bit correction word per level — the seed correction with the two
//! control-bit corrections and the value correction packed into its three cleared low bits —
//! and one final correction bit: `16·n` bytes plus one bit per key, the same correction
//! words in both keys. No early termination: with a one-bit output it would save at most
//! 7 of the `n` levels (`n ≤ 63`) at the cost of a second code path.
//!
//! This is written here rather than taken from the `fss-rs` crate: the comparison keys are
//! the product of this backend, the batching across keys (one AES batch per level over all
//! keys of a layer) is where its speed comes from, and the key layout (correction words
//! shared between the parties, root seeds from the pairwise PRGs) decides its offline bytes.

use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};

/// The fixed public AES key of the PRG (any constant works; fixed-key AES is modelled as a
/// random permutation).
const FIXED_KEY: [u8; 16] = *b"knapsec-fss-dcf1";
/// Domain constants of the left and right expansions.
const SIDE: [u128; 2] = [0, 0x5555_5555_5555_5555_aaaa_aaaa_aaaa_aaaa];
/// The seed bits of a PRG output (bits 0–2 carry `t`, `v` and, in a correction word, the
/// value correction).
const SEED_MASK: u128 = !7;
/// Keys per AES batch.
const BATCH: usize = 256;

/// The PRG: fixed-key AES.
#[derive(Clone)]
pub struct Prg {
    aes: Aes128,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dcf::Prg")
    }
}

impl Default for Prg {
    fn default() -> Self {
        Prg {
            aes: Aes128::new(&FIXED_KEY.into()),
        }
    }
}

impl Prg {
    /// `G(s_k, side_k)` for every `k`, in place (`x ← AES(x ⊕ c) ⊕ x ⊕ c`).
    fn expand(&self, seeds: &mut [u128], sides: impl Iterator<Item = usize>) {
        let mut blocks: Vec<aes::Block> = Vec::with_capacity(seeds.len());
        let mut inputs: Vec<u128> = Vec::with_capacity(seeds.len());
        for (s, side) in seeds.iter().zip(sides) {
            let x = *s ^ SIDE[side];
            inputs.push(x);
            blocks.push(x.to_le_bytes().into());
        }
        self.aes.encrypt_blocks(&mut blocks);
        for ((s, b), x) in seeds.iter_mut().zip(&blocks).zip(&inputs) {
            let out: [u8; 16] = (*b).into();
            *s = u128::from_le_bytes(out) ^ x;
        }
    }
}

/// Bit `i` (from the most significant of `n`) of `y`.
#[inline]
fn bit(y: u64, n: u32, i: u32) -> usize {
    ((y >> (n - 1 - i)) & 1) as usize
}

/// The conversion of a final seed to an output bit (bit 3: bits 0–2 are cleared).
#[inline]
fn convert(s: u128) -> u8 {
    ((s >> 3) & 1) as u8
}

/// The correction words of many DCF keys on `n`-bit inputs: both parties' keys hold the same
/// words; they differ only in their root seeds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Corrections {
    /// Input bits.
    pub n: u32,
    /// `n` words per key, key after key.
    pub words: Vec<u128>,
    /// The final correction bit of each key.
    pub last: Vec<u8>,
}

impl Corrections {
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True if there is no key.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Bytes of `keys` keys on `n`-bit inputs as sent: `16·n` per key, and the final bits
    /// packed eight to a byte.
    pub fn wire_bytes(n: u32, keys: usize) -> usize {
        16 * n as usize * keys + keys.div_ceil(8)
    }

    /// The wire form: the words (16 bytes each, little-endian), then the packed final bits.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::wire_bytes(self.n, self.len()));
        for w in &self.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&pack_bits(&self.last));
        out
    }

    /// Parses the wire form of `keys` keys on `n`-bit inputs; `None` if the length differs.
    pub fn from_bytes(n: u32, keys: usize, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != Self::wire_bytes(n, keys) {
            return None;
        }
        let split = 16 * n as usize * keys;
        let words = bytes[..split]
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect();
        let last = unpack_bits(&bytes[split..], keys);
        Some(Corrections { n, words, last })
    }
}

/// Packs bits (one per byte, 0 or 1) eight to a byte, least significant first.
pub fn pack_bits(bits: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        out[i / 8] |= (b & 1) << (i % 8);
    }
    out
}

/// Unpacks `n` bits packed by [`pack_bits`] (bits beyond `n` in the last byte are ignored).
pub fn unpack_bits(bytes: &[u8], n: usize) -> Vec<u8> {
    (0..n).map(|i| (bytes[i / 8] >> (i % 8)) & 1).collect()
}

/// Generates one key pair per `alphas[k]` for `f(y) = [y < α_k]` on `n`-bit inputs
/// (`n ≤ 64`; bits of `α` above `n` are ignored), from the parties' root seeds `roots[0][k]`,
/// `roots[1][k]`. Returns the correction words both keys share.
#[allow(clippy::needless_range_loop)]
pub fn generate(prg: &Prg, n: u32, alphas: &[u64], roots: [&[u128]; 2]) -> Corrections {
    assert!(n <= 64, "DCF inputs of at most 64 bits");
    let count = alphas.len();
    assert!(roots[0].len() == count && roots[1].len() == count);
    let nn = n as usize;
    let mut words = vec![0u128; count * nn];
    let mut last = vec![0u8; count];
    let mut buf = Vec::with_capacity(4 * BATCH);
    for start in (0..count).step_by(BATCH) {
        let end = (start + BATCH).min(count);
        let m = end - start;
        let mut s = [roots[0][start..end].to_vec(), roots[1][start..end].to_vec()];
        let mut t = [vec![0u8; m], vec![1u8; m]];
        let mut va = vec![0u8; m];
        for i in 0..n {
            // expansions: [s0 L, s0 R, s1 L, s1 R] per key
            buf.clear();
            for k in 0..m {
                buf.extend_from_slice(&[s[0][k], s[0][k], s[1][k], s[1][k]]);
            }
            prg.expand(&mut buf, (0..4 * m).map(|j| j & 1));
            for k in 0..m {
                let e = &buf[4 * k..4 * k + 4];
                let a = bit(alphas[start + k], n, i);
                let (keep, lose) = (a, 1 - a);
                let seed = |b: usize, side: usize| e[2 * b + side] & SEED_MASK;
                let tb = |b: usize, side: usize| (e[2 * b + side] & 1) as u8;
                let vb = |b: usize, side: usize| ((e[2 * b + side] >> 1) & 1) as u8;
                let s_cw = seed(0, lose) ^ seed(1, lose);
                let mut v_cw = vb(0, lose) ^ vb(1, lose) ^ va[k];
                if lose == 0 {
                    // α's bit is 1: inputs going left here are below α.
                    v_cw ^= 1;
                }
                va[k] ^= vb(0, keep) ^ vb(1, keep) ^ v_cw;
                let t_cw = [
                    tb(0, 0) ^ tb(1, 0) ^ a as u8 ^ 1,
                    tb(0, 1) ^ tb(1, 1) ^ a as u8,
                ];
                words[(start + k) * nn + i as usize] = s_cw
                    | u128::from(t_cw[0])
                    | (u128::from(t_cw[1]) << 1)
                    | (u128::from(v_cw) << 2);
                for b in 0..2 {
                    let tp = t[b][k];
                    s[b][k] = seed(b, keep) ^ if tp == 1 { s_cw } else { 0 };
                    t[b][k] = tb(b, keep) ^ (tp & t_cw[keep]);
                }
            }
        }
        for k in 0..m {
            last[start + k] = convert(s[1][k]) ^ convert(s[0][k]) ^ va[k];
        }
    }
    Corrections { n, words, last }
}

/// Evaluates party `party`'s (0 or 1) keys — root seeds `roots`, shared corrections `cw` — at
/// the inputs `xs` (bits above `n` ignored): writes this party's share bit of `[x_k < α_k]`
/// to `out[k]`.
#[allow(clippy::needless_range_loop)]
pub fn eval(prg: &Prg, party: u8, roots: &[u128], cw: &Corrections, xs: &[u64], out: &mut [u8]) {
    let n = cw.n;
    let nn = n as usize;
    let count = xs.len();
    assert!(roots.len() == count && cw.len() == count && out.len() == count);
    let mut s = Vec::with_capacity(BATCH);
    for start in (0..count).step_by(BATCH) {
        let end = (start + BATCH).min(count);
        let m = end - start;
        s.clear();
        s.extend_from_slice(&roots[start..end]);
        let mut t = vec![party & 1; m];
        let mut v = vec![0u8; m];
        for i in 0..n {
            prg.expand(&mut s, (start..end).map(|k| bit(xs[k], n, i)));
            for k in 0..m {
                let side = bit(xs[start + k], n, i);
                let w = cw.words[(start + k) * nn + i as usize];
                let e = s[k];
                let tp = t[k];
                let mut seed = e & SEED_MASK;
                let mut tt = (e & 1) as u8;
                let vv = ((e >> 1) & 1) as u8;
                if tp == 1 {
                    seed ^= w & SEED_MASK;
                    tt ^= ((w >> side) & 1) as u8;
                }
                v[k] ^= vv ^ (tp & ((w >> 2) & 1) as u8);
                s[k] = seed;
                t[k] = tt;
            }
        }
        for k in 0..m {
            out[start + k] = v[k] ^ convert(s[k]) ^ (t[k] & cw.last[start + k]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roots(count: usize, salt: u8) -> [Vec<u128>; 2] {
        let mut p = knapsec_ring::Prg::new(&[salt; 32], "dcf-test-roots");
        let mut draw = || {
            (0..count)
                .map(|_| u128::from(p.next_u64()) | (u128::from(p.next_u64()) << 64))
                .collect::<Vec<_>>()
        };
        [draw(), draw()]
    }

    /// Reconstructs `[x_k < α_k]` from both parties' evaluations.
    fn both(n: u32, alphas: &[u64], xs: &[u64], salt: u8) -> Vec<u8> {
        let prg = Prg::default();
        let r = roots(alphas.len(), salt);
        let cw = generate(&prg, n, alphas, [&r[0], &r[1]]);
        let mut o0 = vec![0u8; xs.len()];
        let mut o1 = vec![0u8; xs.len()];
        eval(&prg, 0, &r[0], &cw, xs, &mut o0);
        eval(&prg, 1, &r[1], &cw, xs, &mut o1);
        // wire round trip
        let back = Corrections::from_bytes(n, alphas.len(), &cw.to_bytes()).unwrap();
        assert_eq!(back, cw);
        o0.iter().zip(&o1).map(|(a, b)| a ^ b).collect()
    }

    fn low(v: u64, n: u32) -> u64 {
        if n == 64 { v } else { v & ((1u64 << n) - 1) }
    }

    #[test]
    fn exhaustive_on_small_domains() {
        for n in 0..=5u32 {
            let size = 1u64 << n;
            let mut alphas = Vec::new();
            let mut xs = Vec::new();
            for a in 0..size {
                for x in 0..size {
                    alphas.push(a);
                    xs.push(x);
                }
            }
            let got = both(n, &alphas, &xs, n as u8);
            for k in 0..xs.len() {
                assert_eq!(
                    got[k],
                    u8::from(xs[k] < alphas[k]),
                    "n {n} α {} x {}",
                    alphas[k],
                    xs[k]
                );
            }
        }
    }

    #[test]
    fn edges_at_64_and_63_bits() {
        for n in [63u32, 64] {
            let top = low(u64::MAX, n);
            let pts = [0, 1, 2, top / 2, top / 2 + 1, top - 1, top];
            let mut alphas = Vec::new();
            let mut xs = Vec::new();
            for &a in &pts {
                for &x in &pts {
                    alphas.push(a);
                    xs.push(x);
                }
            }
            let got = both(n, &alphas, &xs, 9);
            for k in 0..xs.len() {
                assert_eq!(got[k], u8::from(xs[k] < alphas[k]), "n {n}");
            }
        }
    }

    #[test]
    fn one_key_alone_looks_random() {
        // A party's share of [x < α] over many keys with the same α and x is balanced: the
        // share does not show the answer.
        let n = 16;
        let alphas = vec![1000u64; 4000];
        let xs = vec![10u64; 4000];
        let prg = Prg::default();
        let r = roots(alphas.len(), 3);
        let cw = generate(&prg, n, &alphas, [&r[0], &r[1]]);
        let mut o0 = vec![0u8; xs.len()];
        eval(&prg, 0, &r[0], &cw, &xs, &mut o0);
        let ones: usize = o0.iter().map(|&b| b as usize).sum();
        assert!((1700..2300).contains(&ones), "{ones} ones of 4000");
    }

    #[test]
    fn wire_form_refuses_a_wrong_length() {
        assert!(Corrections::from_bytes(8, 3, &[0u8; 10]).is_none());
        assert_eq!(Corrections::wire_bytes(63, 9), 16 * 63 * 9 + 2);
    }

    proptest! {
        #[test]
        fn matches_the_comparison(n in 1u32..=64, pairs in prop::collection::vec((any::<u64>(), any::<u64>()), 1..40), salt in any::<u8>()) {
            let alphas: Vec<u64> = pairs.iter().map(|p| low(p.0, n)).collect();
            // inputs near α as well as far from it
            let xs: Vec<u64> = pairs.iter().enumerate().map(|(k, p)| {
                let x = if k % 3 == 0 { alphas[k].wrapping_add(p.1 % 3).wrapping_sub(1) } else { p.1 };
                low(x, n)
            }).collect();
            let got = both(n, &alphas, &xs, salt);
            for k in 0..xs.len() {
                prop_assert_eq!(got[k], u8::from(xs[k] < alphas[k]));
            }
        }
    }
}
