//! Secure selection: `y = DReLU(patch sum) · v` for every pixel `v` of every patch, the one
//! primitive behind ReLU, block ReLU (digest §6.11), ReLU6, max pooling (§6.14) and the secure
//! argmax. It replaces the reference's ShareConvert + ComputeMSB + PrivateCompare + Beaver
//! pipeline (§6.9–§6.10) by a cheaper protocol in the same model (client and server hold
//! additive shares over Z_2^64, the helper deals correlated randomness and learns nothing):
//!
//! **Offline.** Client and server draw pixel masks `m₀` (client–helper PRG) and `m₁`
//! (server–helper PRG), so the helper knows `m = m₀ + m₁` without any message. For each
//! patch the helper knows `x = Σ_patch m`, and deals bit shares over Z_67 of the compared
//! window of `x` (client share from the client–helper PRG, server share sent: `n` bytes per
//! patch). Client and server draw the PrivateCompare randomness from their common PRG.
//!
//! **Online.**
//! 1. Each pixel is opened masked: client and server exchange `v_j + m_j` and both learn
//!    `w = v + m` (uniform to each of them): 16 bytes per pixel.
//! 2. Per patch, `z = Σ_patch w − offset = a + x` with `a = Σ_patch v − offset` the value
//!    whose sign is wanted. With `j` the sign bit of the window and `mid` the bits below it,
//!    `bit_j(a) = z_j ⊕ x_j ⊕ [x_mid > z_mid]` (the borrow of `z − x`), **unsigned and exact**
//!    for every input (the reference's signed wrap bits err at −1, −2 ulp, digest §10.8).
//!    `[x_mid > z_mid]` is SecureNN's PrivateCompare of the shared bits of `x` against the
//!    public `z`, masked by a common bit `β`; each party sends `n` values mod 67 to the helper,
//!    re-randomised by a common mask `ρ` (so the helper sees only their sum) and rotated by a
//!    common random offset (so the position of a zero is uniform).
//! 3. The helper learns `β' = β ⊕ [x_mid > z_mid]` (a uniform bit to it), sets
//!    `h = x_j ⊕ β'`, and sends the server its shares of `h` (8 bytes per patch) and of `h·m`
//!    (8 bytes per pixel); the client's shares come from the client–helper PRG.
//! 4. With `p = z_j ⊕ β` (known to client and server) the decision is `b = ¬p ⊕ h`, and
//!    `b·v = b·w − b·m` with `b·m = ¬p·m + (1 − 2¬p)·h·m`: all local.
//!
//! **Twinned halves** (ReLU6's `[x, x − 6]`, [`SelectSpec::twin`]): when the second half of
//! the pixels is the first half minus a public constant `c`, pixel `E + i` takes pixel `i`'s
//! masks `m₀, m₁` (so the helper's `x` and `m` are the same for both), and only the first
//! half is opened: `w_{E+i} = w_i − c` is computed locally. This reveals nothing new: client
//! and server learn `x + m`, from which `x − c + m` follows for the public `c`. The two
//! comparisons of a value keep their own PrivateCompare randomness (`β`, `s`, `ρ`, rotation),
//! bit shares of the mask's window and shares of `h` and `h·m`, so the helper's view of each
//! is as before: a uniform bit and uniform non-zero values at uniform positions.
//!
//! Bytes per call: `16·O + 8·M + (3n + 8)·N` (M pixels of which O opened, O = M except for
//! twinned halves, N patches, `n` compared bits), in 3 rounds; the helper's `n·N` bytes of
//! bit shares are offline. For a plain ReLU (M = O = N, exact, n = 63) that is 221 bytes per
//! element including the multiplication, against the reference's 536 (digest §6.13); a
//! ReLU6 element costs `16 + 2·8 + 2·(3n + 8)`.
//!
//! **Approximate DReLU** (`bits = k`, `lsb_ignored = t`, digest §6.12): only the `n = k − 1`
//! bits `[t', t' + n)` of `mid` are compared and the sign bit is `j = t' + n`, where
//! `t' = t` for a single pixel and `t' = min(t + ⌈log₂ area⌉, 64 − k)` for a patch sum of
//! `area` pixels (so the window applies to the patch *mean*, as in the reference). Writing
//! `W = 2^j` and `T = 2^t'`, the result is exactly `[a ≥ 0]` for
//! `a ∈ [−W + T, −T] ∪ [0, W − T]`; for `−T < a < 0` it is 1 with probability `(T − |a|)/T`
//! (i.e. values within `T` below zero may pass); outside `[−W, W)` it is the sign of the
//! `(j+1)`-bit two's-complement wrap of `a` (periodic, no saturation: the compared bits
//! carry no information about higher bits). In exact mode (`k = 64`, `t = 0`) it is exact
//! for every 64-bit input.

//!
//! The public spec of a batch is in [`spec`], the online part of client and server in
//! [`party`]; the helper's parts and the offline phase are here.

mod party;
mod spec;

pub use spec::{Groups, SelectSpec};

use crate::compare;
use crate::ctx::{Ctx, Pair};
use crate::error::{Result, SecureNnError};
use crate::profile::{OpKind, span};
use knapsec_core::transport::Role;
use knapsec_ring::simd::byte_level;

/// The prime of PrivateCompare (digest §6.2).
pub const P: u32 = 67;

/// One party's preprocessing for one [`SelectSpec`]: only what came over the network or
/// took the helper's sums to make. What a party draws from a PRG it shares (the masks `m`,
/// the client's bit shares `u`, the PrivateCompare randomness, the shares of `h` and `h·m`)
/// is drawn in the online phase of the layer, from the same streams, and dropped with the
/// layer: holding it for a whole network took about 200 bytes per DReLU for each of client
/// and server.
#[derive(Clone, Debug)]
pub enum SelectPre {
    /// The client's share: nothing but the stream (its masks `m₀` are drawn online).
    Client {
        /// The PRG stream id of this selection.
        stream: u64,
    },
    /// The server's share.
    Server {
        /// The PRG stream id of this selection (its masks `m₁` are drawn online).
        stream: u64,
        /// Its bit shares (mod 67) of each patch's compared window of `x`, sent by the helper.
        u: Vec<u8>,
    },
    /// The helper's part.
    Helper {
        /// The PRG stream id of this selection (`m = m₀ + m₁` is drawn again online).
        stream: u64,
        /// The sign bit `x_j` of each patch's masked sum `x`.
        xj: Vec<u8>,
    },
}

const M_LABEL: &str = "securenn/select/m";
const U_LABEL: &str = "securenn/select/u";
const H_LABEL: &str = "securenn/select/h";
const HM_LABEL: &str = "securenn/select/hm";
const PC_LABEL: &str = "securenn/select/pc";

/// The offline phase of one selection (stream `stream` of the PRGs); the helper sends the
/// server its bit shares.
pub fn offline(ctx: &mut Ctx<'_>, spec: &SelectSpec, stream: u64) -> Result<SelectPre> {
    let (np, n) = (spec.patches(), spec.n as usize);
    match ctx.role {
        Role::Client => Ok(SelectPre::Client { stream }),
        Role::Server => {
            let u = ctx.recv_bytes(Role::Helper, np * n)?;
            let _cmp = span(OpKind::Comparison);
            if !below_p(&u) {
                return Err(SecureNnError::Malformed {
                    role: ctx.role,
                    peer: Role::Helper,
                    layer: ctx.layer().to_string(),
                    op: "drelu",
                    message: format!("bit share outside Z_{P}"),
                });
            }
            Ok(SelectPre::Server { stream, u })
        }
        Role::Helper => {
            let prg = span(OpKind::Prg);
            let e = spec.opened();
            let m = helper_masks(ctx, stream, e)?;
            let mut u1 = ctx
                .prg(Pair::ClientHelper, U_LABEL, stream)?
                .mod_p(np * n, P as u8)
                .expect("p");
            drop(prg);
            let _cmp = span(OpKind::Comparison);
            let mut xj = vec![0u8; np];
            // Per chunk of patches: the sign bit and the compared window of each masked sum,
            // then the server's bit shares of the windows in place of the client's.
            let mut windows = [0u64; 4096];
            for start in (0..np).step_by(windows.len()) {
                let end = (start + windows.len()).min(np);
                for (g, w) in (start..end).zip(windows.iter_mut()) {
                    let mut x = 0u64;
                    spec.cmp
                        .for_each(g, |i| x = x.wrapping_add(m[spec.opened_pixel(i)]));
                    let t = u32::from(spec.shift[g]);
                    xj[g] = ((x >> (t + n as u32)) & 1) as u8;
                    *w = x >> t;
                }
                if n > 0 {
                    compare::server_bit_shares(
                        byte_level(),
                        n,
                        &windows[..end - start],
                        &mut u1[start * n..end * n],
                    );
                }
            }
            ctx.send_bytes(Role::Server, u1)?;
            Ok(SelectPre::Helper { stream, xj })
        }
    }
}

/// The helper's pixel masks `m = m₀ + m₁` (the client's and the server's streams).
fn helper_masks(ctx: &Ctx<'_>, stream: u64, m_len: usize) -> Result<Vec<u64>> {
    let mut m = ctx.prg(Pair::ClientHelper, M_LABEL, stream)?.u64s(m_len);
    let mut prg = ctx.prg(Pair::ServerHelper, M_LABEL, stream)?;
    let mut m1 = [0u64; 4096];
    for chunk in m.chunks_mut(m1.len()) {
        let m1 = &mut m1[..chunk.len()];
        prg.fill_u64(m1);
        chunk
            .iter_mut()
            .zip(m1.iter())
            .for_each(|(a, b)| *a = a.wrapping_add(*b));
    }
    Ok(m)
}

/// True if every byte is a value mod 67.
fn below_p(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |m, &v| m.max(v)) < P as u8
}

/// The online phase: `values` is this party's share of the `M` pixel values (client and
/// server; the helper passes an empty slice; for a twinned spec the first half suffices). Returns this party's share of the `M` outputs
/// (empty for the helper).
#[allow(clippy::needless_range_loop)]
pub fn online(
    ctx: &mut Ctx<'_>,
    spec: &SelectSpec,
    pre: &SelectPre,
    values: &[u64],
) -> Result<Vec<u64>> {
    let (m_len, np, n) = (spec.pixels, spec.patches(), spec.n as usize);
    let layer = ctx.layer().to_string();
    let bad = |role: Role, message: String| SecureNnError::Input {
        role,
        message: format!("layer {layer:?}: {message}"),
    };
    match (ctx.role, pre) {
        (Role::Helper, SelectPre::Helper { stream, xj }) => {
            ctx.scope(&layer, "drelu");
            let d0 = ctx.recv_bytes(Role::Client, np * n)?;
            let d1 = ctx.recv_bytes(Role::Server, np * n)?;
            let cmp = span(OpKind::Comparison);
            for (d, peer) in [(&d0, Role::Client), (&d1, Role::Server)] {
                if !below_p(d) {
                    return Err(SecureNnError::Malformed {
                        role: ctx.role,
                        peer,
                        layer: layer.clone(),
                        op: "drelu",
                        message: format!("PrivateCompare message outside Z_{P}"),
                    });
                }
            }
            let mut found = vec![0u8; np];
            if n > 0 {
                compare::zero_found(byte_level(), n, &d0, &d1, &mut found);
            }
            drop((d0, d1, cmp));
            let (m, mut h1, hm0) = {
                let _prg = span(OpKind::Prg);
                (
                    helper_masks(ctx, *stream, spec.opened())?,
                    ctx.prg(Pair::ClientHelper, H_LABEL, *stream)?.u64s(np),
                    ctx.prg(Pair::ClientHelper, HM_LABEL, *stream)?.u64s(m_len),
                )
            };
            let sel_span = span(OpKind::Selection);
            // hm1 is written as the message itself (little-endian), not copied for sending.
            let mut hm1 = vec![0u8; m_len * 8];
            let sel = spec.sel();
            // A twinned spec's second half is masked by the first half's masks.
            let e = m.len();
            // h1 = h − h0 (in place of the client's share h0)
            for ((h1, &x), &f) in h1.iter_mut().zip(xj).zip(&found) {
                *h1 = u64::from(x ^ f).wrapping_sub(*h1);
            }
            // hm1 = h·m − hm0, h = h0 + h1 ∈ {0, 1}
            let hm = |g: usize, i: usize, mi: u64| {
                let all = 0u64.wrapping_sub(u64::from(xj[g] ^ found[g]));
                (mi & all).wrapping_sub(hm0[i]).to_le_bytes()
            };
            match sel {
                Groups::Singles(_) => {
                    // pixel g is patch g; the second half of a twinned spec (g ≥ e) takes
                    // the first half's masks
                    let (first, second) = hm1[..np * 8].split_at_mut(e.min(np) * 8);
                    for (g, v) in first.chunks_exact_mut(8).enumerate() {
                        v.copy_from_slice(&hm(g, g, m[g]));
                    }
                    for (i, v) in second.chunks_exact_mut(8).enumerate() {
                        v.copy_from_slice(&hm(e + i, e + i, m[i]));
                    }
                }
                _ => (0..np).for_each(|g| {
                    sel.for_each(g, |i| {
                        hm1[8 * i..8 * i + 8].copy_from_slice(&hm(g, i, m[spec.opened_pixel(i)]))
                    })
                }),
            }
            drop((hm0, sel_span));
            ctx.send_u64(Role::Server, &h1)?;
            ctx.scope(&layer, "select-mult");
            ctx.send_bytes(Role::Server, hm1)?;
            Ok(Vec::new())
        }
        (Role::Client, SelectPre::Client { stream }) => {
            party::client_server(ctx, spec, *stream, None, values)
        }
        (Role::Server, SelectPre::Server { stream, u }) => {
            party::client_server(ctx, spec, *stream, Some(u), values)
        }
        (role, _) => Err(bad(role, "preprocessing of another party".into())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::party::CHUNK;
    use super::*;
    use crate::options::DreluMode;
    use knapsec_core::backend::SessionKeys;
    use knapsec_net::{CommReport, Metered, memory_network};
    use knapsec_ring::Prg;

    /// Shares `values` (client gets `v − r`, server `r`), runs `spec` with three threads, and
    /// returns the reconstructed outputs and the merged traffic report.
    pub(crate) fn run_select(spec: &SelectSpec, values: &[u64]) -> (Vec<u64>, CommReport) {
        let keys = SessionKeys {
            client_server: Some([1; 32]),
            client_helper: Some([2; 32]),
            server_helper: Some([3; 32]),
            private: [0; 32],
            ..SessionKeys::default()
        };
        let r: Vec<u64> = Prg::new(&[9; 32], "test-shares").u64s(values.len());
        let x0: Vec<u64> = values
            .iter()
            .zip(&r)
            .map(|(v, r)| v.wrapping_sub(*r))
            .collect();
        let nets = memory_network().map(Metered::new);
        let outs: Vec<(Vec<u64>, CommReport)> = std::thread::scope(|s| {
            let hs: Vec<_> = nets
                .into_iter()
                .zip(Role::ALL)
                .map(|(mut t, role)| {
                    let (keys, x0, r) = (&keys, &x0, &r);
                    s.spawn(move || {
                        let mut ctx = Ctx::new(role, &mut t, keys);
                        ctx.set_nonce(&[5; 16]);
                        ctx.scope("test", "drelu");
                        let pre = offline(&mut ctx, spec, 7).unwrap();
                        let v: &[u64] = match role {
                            Role::Client => x0,
                            Role::Server => r,
                            Role::Helper => &[],
                        };
                        let y = online(&mut ctx, spec, &pre, v).unwrap();
                        drop(ctx);
                        (y, t.report())
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let y = outs[0]
            .0
            .iter()
            .zip(&outs[1].0)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        let mut rep = CommReport::default();
        for (_, r) in &outs {
            rep.merge(r);
        }
        (y, rep)
    }

    /// DReLU of single values (`[a ≥ 0]`) through a selection of the constant... the value
    /// itself: returns `[a ≥ 0]` decoded from `y = b·a` is ambiguous at 0, so select a second
    /// pixel holding 1.
    fn drelu(values: &[i64], mode: DreluMode) -> Vec<u8> {
        let n = values.len();
        let ptr = (0..=n).map(|g| 2 * g).collect();
        let idx = (0..n).flat_map(|g| [g as u32, (g + n) as u32]).collect();
        let spec = SelectSpec::new(
            2 * n,
            Groups::Singles(n),
            Some(Groups::Csr { ptr, idx }),
            0,
            mode,
        )
        .unwrap();
        let mut v: Vec<u64> = values.iter().map(|&a| a as u64).collect();
        v.extend(std::iter::repeat_n(1u64, n));
        let (y, rep) = run_select(&spec, &v);
        assert_eq!(rep.bytes, spec.bytes(), "closed form");
        (0..n)
            .map(|i| {
                let b = y[n + i];
                assert!(b <= 1, "bit {b}");
                assert_eq!(y[i], if b == 1 { values[i] as u64 } else { 0 });
                b as u8
            })
            .collect()
    }

    #[test]
    fn exact_drelu_at_the_edges() {
        let vals = [
            0,
            1,
            -1,
            2,
            -2,
            3,
            -3,
            1 << 62,
            -(1 << 62),
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
            4096,
            -4096,
        ];
        let got = drelu(&vals, DreluMode::Exact);
        let want: Vec<u8> = vals.iter().map(|&a| u8::from(a >= 0)).collect();
        assert_eq!(got, want);
    }

    /// `n` random values of every magnitude (seeded by `seed`) through the exact DReLU.
    fn check_exact_drelu(seed: u8, n: usize) {
        let mut prg = Prg::new(&[seed; 32], "vals");
        let vals: Vec<i64> = (0..n)
            .map(|i| (prg.next_u64() as i64) >> (i % 64))
            .collect();
        let got = drelu(&vals, DreluMode::Exact);
        for (a, b) in vals.iter().zip(&got) {
            assert_eq!(*b, u8::from(*a >= 0), "a = {a}");
        }
    }

    #[test]
    fn exact_drelu_on_random_values_of_every_magnitude() {
        check_exact_drelu(4, 2000);
    }

    #[test]
    fn exact_drelu_over_several_message_chunks() {
        // More patches than two chunks of PrivateCompare messages, the last one partial.
        check_exact_drelu(6, 2 * CHUNK + 3);
    }

    #[test]
    fn approximate_drelu_window() {
        // k = 16, t = 0: exact on [-2^15, 2^15 - 1], periodic (wraps) outside.
        let mode = DreluMode::Approx {
            bits: 16,
            lsb_ignored: 0,
        };
        let w = 1i64 << 15;
        let vals = [0, 1, -1, -2, 2, w - 1, -w, -w + 1, 100, -100];
        assert_eq!(
            drelu(&vals, mode),
            vals.iter().map(|&a| u8::from(a >= 0)).collect::<Vec<_>>()
        );
        // outside the window: the sign of the 16-bit wrap
        let out = [w, w + 5, -w - 1, 3 * w];
        assert_eq!(drelu(&out, mode), vec![0, 0, 1, 0]);
        // t = 4: exact for |a| ≥ 16 inside the window, non-negative always 1
        let mode = DreluMode::Approx {
            bits: 12,
            lsb_ignored: 4,
        };
        let w = 1i64 << 15;
        let vals = [0, 1, 15, 16, -16, -17, -1000, 1000, w - 16, -w + 16, -w];
        let got = drelu(&vals, mode);
        assert_eq!(
            got,
            vals.iter().map(|&a| u8::from(a >= 0)).collect::<Vec<_>>()
        );
        // within 2^t below zero the answer may be wrong, but stays a bit
        drelu(&[-1, -8, -15], mode);
    }

    #[test]
    fn block_selection_keeps_positive_patches() {
        // two patches: {0,1,2} sum 5 - 3 + 1 = 3 > 0 (kept), {3,4} sum -1 (zeroed); strict: {5,6} sum 0 (zeroed)
        let v: Vec<u64> = [2i64, -3, 6, 4, -5, 1, -1]
            .iter()
            .map(|&a| a as u64)
            .collect();
        let cmp = Groups::Csr {
            ptr: vec![0, 3, 5, 7],
            idx: vec![0, 1, 2, 3, 4, 5, 6],
        };
        let spec = SelectSpec::new(7, cmp, None, 1, DreluMode::Exact).unwrap();
        let (y, rep) = run_select(&spec, &v);
        assert_eq!(y, vec![2u64, (-3i64) as u64, 6, 0, 0, 0, 0]);
        // 24 per pixel + (3·63 + 8) per patch
        assert_eq!(rep.bytes, 24 * 7 + 197 * 3);
        assert_eq!(rep.op("drelu").bytes, (3 * 63 + 8) * 3);
    }
}

#[cfg(test)]
mod patch_tests {
    use super::tests::run_select;
    use super::*;
    use crate::options::DreluMode;
    use knapsec_ring::Prg;

    /// Patches of mixed sizes under a short window: sums well inside the window and away
    /// from zero decide exactly; every pixel of a kept patch passes, the others are 0.
    #[test]
    fn short_window_patches_of_mixed_sizes() {
        let mut prg = Prg::new(&[5; 32], "patches");
        let (mut ptr, mut idx, mut v, mut keep) = (vec![0usize], Vec::new(), Vec::new(), vec![]);
        for g in 0..300usize {
            let size = 1 + g % 5;
            let positive = prg.next_u64() & 1 == 1;
            for _ in 0..size {
                idx.push(v.len() as u32);
                let mag = 1000 + (prg.next_u64() % 1000) as i64;
                v.push(if positive { mag } else { -mag } as u64);
            }
            keep.push(positive);
            ptr.push(idx.len());
        }
        let mode = DreluMode::Approx {
            bits: 14,
            lsb_ignored: 3,
        };
        let cmp = Groups::Csr {
            ptr: ptr.clone(),
            idx,
        };
        let spec = SelectSpec::new(v.len(), cmp, None, 1, mode).unwrap();
        let (y, rep) = run_select(&spec, &v);
        assert_eq!(rep.bytes, spec.bytes());
        for (g, &k) in keep.iter().enumerate() {
            for i in ptr[g]..ptr[g + 1] {
                assert_eq!(y[i], if k { v[i] } else { 0 }, "patch {g} pixel {i}");
            }
        }
    }

    /// A twinned spec (ReLU6's halves) given only its first half: `[x ≥ 0]·x` and
    /// `[x − c ≥ 0]·(x − c)`, one opening (16 bytes per value less than two).
    #[test]
    fn twinned_halves_share_one_opening() {
        let c = 6u64 << 12;
        let x: Vec<i64> = (-40..40).map(|k| k * 1000 + 7).collect();
        let e = x.len();
        let spec = SelectSpec::new(2 * e, Groups::Singles(2 * e), None, 0, DreluMode::Exact)
            .unwrap()
            .twinned(c)
            .unwrap();
        assert_eq!(spec.opened(), e);
        let v: Vec<u64> = x.iter().map(|&a| a as u64).collect();
        let (y, rep) = run_select(&spec, &v);
        assert_eq!(rep.bytes, spec.bytes());
        assert_eq!(spec.bytes() + 16 * e as u64, {
            let mut plain = spec.clone();
            plain.twin = None;
            plain.bytes()
        });
        for (k, &a) in x.iter().enumerate() {
            assert_eq!(y[k], if a >= 0 { a as u64 } else { 0 }, "x = {a}");
            let b = a - c as i64;
            assert_eq!(y[e + k], if b >= 0 { b as u64 } else { 0 }, "x − c = {b}");
        }
        assert!(
            SelectSpec::new(3, Groups::Singles(3), None, 0, DreluMode::Exact)
                .unwrap()
                .twinned(c)
                .is_err()
        );
    }
}
