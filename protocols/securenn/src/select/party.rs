//! The online phase of client and server in a secure selection (steps 1, 2 and 4 of
//! [`crate::select`]): the masked opening, the PrivateCompare messages to the helper (with the
//! common randomness of client and server drawn for the layer, digest §6.10), and the local
//! products `b·v` from the helper's shares of `h` and `h·m`.

use super::{Groups, H_LABEL, HM_LABEL, M_LABEL, P, PC_LABEL, SelectSpec, U_LABEL};
use crate::compare;
use crate::ctx::{Ctx, Pair};
use crate::error::{Result, SecureNnError};
use crate::profile::{OpKind, span};
use knapsec_core::transport::Role;
use knapsec_ring::Prg;
use knapsec_ring::simd::byte_level;

/// Patches per chunk of PrivateCompare messages (the client's bit shares are drawn one chunk
/// at a time: `CHUNK · n` bytes instead of `n` bytes per patch of the layer).
pub(super) const CHUNK: usize = 1 << 14;

/// Common PrivateCompare randomness of client and server (`rho` is drawn into the buffer
/// the messages are then written over, see [`client_server`]).
#[derive(Clone, Debug, Default)]
struct PcRand {
    beta: Vec<u8>,
    s: Vec<u8>,
    rot: Vec<u8>,
}

impl PcRand {
    /// Draws `β`, `s`, then `ρ` into `rho` (`patches · n` bytes), then the rotations: the
    /// order of the common stream. A rotation is one keystream byte, rejected at or above the
    /// largest multiple of `n` (`n ≤ 64`), like the values mod 67: uniform in `0..n`, and an
    /// eighth of the bytes of a 64-bit draw.
    fn draw(mut prg: Prg, patches: usize, n: usize, rho: &mut [u8]) -> Self {
        let beta = prg.bits(patches);
        let mut s = prg.mod_p(patches * n, (P - 1) as u8).expect("p ≥ 2");
        s.iter_mut().for_each(|v| *v += 1);
        prg.mod_p_into(rho, P as u8).expect("p ≥ 2");
        let rot = if n >= 2 {
            prg.mod_p(patches, n as u8).expect("n ≥ 2")
        } else {
            // One compared bit: the only rotation is 0.
            vec![0; patches]
        };
        PcRand { beta, s, rot }
    }
}

/// The online phase of client (`u = None`: its bit shares come from its PRG with the
/// helper) and server (`u`: the shares the helper sent offline).
pub(super) fn client_server(
    ctx: &mut Ctx<'_>,
    spec: &SelectSpec,
    stream: u64,
    u: Option<&Vec<u8>>,
    values: &[u64],
) -> Result<Vec<u64>> {
    let (m_len, np, n) = (spec.pixels, spec.patches(), spec.n as usize);
    let layer = ctx.layer().to_string();
    // A twinned spec reads only the first half (its second half follows from it).
    let e = spec.opened();
    if values.len() != m_len && values.len() != e {
        return Err(SecureNnError::Input {
            role: ctx.role,
            message: format!(
                "layer {layer:?}: {} pixel shares, expected {m_len}",
                values.len()
            ),
        });
    }
    let j = u32::from(ctx.role == Role::Server);
    let peer = if j == 0 { Role::Server } else { Role::Client };
    // 1. open v + m (a twinned spec opens its first half only: the second half's
    // `w = v + m` is the first half's minus the public constant)
    ctx.scope(&layer, "select-open");
    let m = {
        let _prg = span(OpKind::Prg);
        let pair = if j == 0 {
            Pair::ClientHelper
        } else {
            Pair::ServerHelper
        };
        ctx.prg(pair, M_LABEL, stream)?.u64s(e)
    };
    let m = &m[..];
    // `v + m` goes out as the message itself (little-endian), and is added again to the
    // peer's half rather than kept: one pass less over memory than a copy for sending.
    let sel_span = span(OpKind::Selection);
    let mut mine = Vec::with_capacity(e * 8);
    for (v, m) in values[..e].iter().zip(m) {
        mine.extend_from_slice(&v.wrapping_add(*m).to_le_bytes());
    }
    drop(sel_span);
    ctx.send_bytes(peer, mine)?;
    let theirs = ctx.recv_bytes(peer, e * 8)?;
    let sel_span = span(OpKind::Selection);
    // w = v + m from both halves, in one pass over the message. A twinned spec's second
    // half `w − c` is not stored: it is computed where it is read.
    let w: Vec<u64> = theirs
        .chunks_exact(8)
        .zip(values[..e].iter().zip(m))
        .map(|(b, (v, m))| {
            u64::from_le_bytes(b.try_into().expect("8 bytes")).wrapping_add(v.wrapping_add(*m))
        })
        .collect();
    drop((theirs, sel_span));
    let twin = spec.twin.unwrap_or(0);
    let w_at = |i: usize| {
        let o = spec.opened_pixel(i);
        if o == i {
            w[i]
        } else {
            w[o].wrapping_sub(twin)
        }
    };
    // 2. PrivateCompare messages, with the randomness of this layer drawn now. The common
    // randomness comes whole (its parts follow each other in one stream), `ρ` drawn into the
    // message buffer and overwritten chunk by chunk; the client's bit shares, a stream of
    // their own, are drawn chunk by chunk; all of it is dropped before the helper's answer
    // is awaited.
    ctx.scope(&layer, "drelu");
    let prg = span(OpKind::Prg);
    let mut d = vec![0u8; np * n];
    let pc = PcRand::draw(
        ctx.prg(Pair::ClientServer, PC_LABEL, stream)?,
        np,
        n,
        &mut d,
    );
    let mut u_prg = match u {
        Some(_) => None,
        None => Some(ctx.prg(Pair::ClientHelper, U_LABEL, stream)?),
    };
    drop(prg);
    let cmp = span(OpKind::Comparison);
    let mut zbit = vec![0u8; np];
    let mut r = vec![0u64; np];
    let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
    let window = |z: u64, t: u8| {
        let z = z.wrapping_sub(spec.offset);
        let t = u32::from(t);
        ((z >> t) & mask, ((z >> (t + n as u32)) & 1) as u8)
    };
    if let Groups::Singles(_) = &spec.cmp {
        // One pixel a patch: patch g is pixel g (loops without the groups' indirection),
        // pixels from e on those of a twinned spec's second half.
        let half = e.min(np);
        let (r1, r2) = r.split_at_mut(half);
        let (zb1, zb2) = zbit.split_at_mut(half);
        let (t1, t2) = spec.shift.split_at(half);
        for (((r, zb), &z), &t) in r1.iter_mut().zip(zb1).zip(&w).zip(t1) {
            (*r, *zb) = window(z, t);
        }
        for (((r, zb), &z), &t) in r2.iter_mut().zip(zb2).zip(&w).zip(t2) {
            (*r, *zb) = window(z.wrapping_sub(twin), t);
        }
    } else {
        for g in 0..np {
            let mut z = 0u64;
            spec.cmp.for_each(g, |i| z = z.wrapping_add(w_at(i)));
            (r[g], zbit[g]) = window(z, spec.shift[g]);
        }
    }
    if n > 0 {
        let chunk = CHUNK.min(np) * n;
        let mut rho = vec![0u8; chunk];
        let mut us = vec![0u8; if u_prg.is_some() { chunk } else { 0 }];
        for start in (0..np).step_by(CHUNK) {
            let end = (start + CHUNK).min(np);
            let (a, b) = (start * n, end * n);
            let rho = &mut rho[..b - a];
            rho.copy_from_slice(&d[a..b]);
            let us: &[u8] = match (u, u_prg.as_mut()) {
                (Some(u), _) => &u[a..b],
                (None, Some(prg)) => {
                    let _prg = span(OpKind::Prg);
                    let buf = &mut us[..b - a];
                    prg.mod_p_into(buf, P as u8).expect("p");
                    buf
                }
                (None, None) => unreachable!("the client draws its bit shares"),
            };
            compare::Messages {
                j,
                n,
                r: &r[start..end],
                beta: &pc.beta[start..end],
                u: us,
                s: &pc.s[a..b],
                rho,
                rot: &pc.rot[start..end],
            }
            .write(byte_level(), &mut d[a..b]);
        }
    }
    let PcRand { beta, s, rot } = pc;
    drop((s, rot, r, u_prg, cmp));
    ctx.send_bytes(Role::Helper, d)?;
    // 3. shares of h and h·m
    let (h, mut hm) = if j == 0 {
        let _prg = span(OpKind::Prg);
        (
            ctx.prg(Pair::ClientHelper, H_LABEL, stream)?.u64s(np),
            ctx.prg(Pair::ClientHelper, HM_LABEL, stream)?.u64s(m_len),
        )
    } else {
        let h = ctx.recv_u64(Role::Helper, np)?;
        ctx.scope(&layer, "select-mult");
        (h, ctx.recv_u64(Role::Helper, m_len)?)
    };
    // 4. local products: output `i` needs `h·m` of pixel `i` only, so when every pixel is
    // selected (one patch a pixel) the outputs overwrite the shares of `h·m`. With
    // `¬p = 1 ⊕ z_j ⊕ β`: `b_j = [j = 0]·¬p + h_j·(1 − 2¬p)` and
    // `y_j = b_j·w − ¬p·m_j ± (h·m)_j` (`+` when `¬p = 1`, `m_j` this party's mask), computed
    // without branches on the random `¬p`.
    let _sel = span(OpKind::Selection);
    let sel = spec.sel();
    let lead = 1 - u64::from(j);
    let decision = |g: usize| {
        let notp = u64::from(1 ^ zbit[g] ^ beta[g]);
        // all ones when ¬p = 1
        let all = 0u64.wrapping_sub(notp);
        let hg = h[g];
        let b = hg ^ ((hg ^ lead.wrapping_sub(hg)) & all);
        (b, all)
    };
    // y = b·w − (m if ¬p) − hm + (2·hm if ¬p)
    let product = |(b, all): (u64, u64), w: u64, m: u64, hm: u64| {
        b.wrapping_mul(w)
            .wrapping_sub(m & all)
            .wrapping_sub(hm)
            .wrapping_add((hm & all) << 1)
    };
    let y = match sel {
        Groups::Singles(len) if *len == m_len => {
            // Pixel g is patch g: the outputs overwrite the shares of h·m in place; the
            // second half of a twinned spec takes the first half's masks.
            let mut y = std::mem::take(&mut hm);
            let (first, second) = y.split_at_mut(e);
            for (g, (y, &w)) in first.iter_mut().zip(&w).enumerate() {
                *y = product(decision(g), w, m[g], *y);
            }
            for (i, (y, &w)) in second.iter_mut().zip(&w).enumerate() {
                *y = product(decision(e + i), w.wrapping_sub(twin), m[i], *y);
            }
            y
        }
        _ => {
            let mut y = vec![0u64; m_len];
            for g in 0..np {
                let d = decision(g);
                sel.for_each(g, |i| {
                    y[i] = product(d, w_at(i), m[spec.opened_pixel(i)], hm[i]);
                });
            }
            y
        }
    };
    Ok(y)
}
