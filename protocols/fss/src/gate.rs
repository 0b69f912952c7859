//! The selection gate: `y = DReLU(patch sum) · v` for every pixel `v` of every patch — the
//! one primitive behind ReLU, block ReLU (digest §6.11), ReLU6, max pooling (§6.14) and the
//! secure argmax — with the sign test as a distributed comparison function ([`crate::dcf`])
//! whose keys the helper deals.
//!
//! Shares: client and server hold additive shares over Z_2^64 of the `M` pixel values; the
//! client's share is input-independent and known to the helper (the invariant of
//! [`crate::exec`]), so its half of every opening is sent offline.
//!
//! **Offline (helper = dealer).** Pixel masks `r = r_c + r_s` (`r_c` from the client–helper
//! PRG, `r_s` from the server–helper PRG). Per patch `g`, with `ρ = Σ_patch r`, the window of
//! the patch (`t'` ignored low bits, `n` compared bits, sign bit `j = t' + n`, the same
//! windows as `securenn`, [`SelectSpec::new`]) and a private random bit `r_b`: a DCF key pair
//! of `[y < ρ_mid]` on `n` bits (root seeds from the pairwise PRGs, the `16·n`-byte
//! corrections sent to both), bits `e_c ⊕ e_s = 1 ⊕ ρ_j ⊕ r_b`, and arithmetic shares of `r_b`
//! and of `r_b · r_i` for every selected pixel `i`. The client sends the server `v_c + r_c`.
//!
//! **Online.**
//! 1. The server sends `v_s + r_s` and its share bit `DCF_s(â_mid) ⊕ e_s` per patch, where
//!    `v̂ = v + r` (the server already knows it) and `â = Σ_patch v̂ − offset = a + ρ`.
//! 2. The client learns `v̂`, evaluates its key and opens `b̂ = b ⊕ r_b` with
//!    `b = 1 ⊕ â_j ⊕ ρ_j ⊕ [â_mid < ρ_mid]` — the same sign formula as `securenn`'s
//!    (`bit_j(a) = â_j ⊕ ρ_j ⊕ borrow`, unsigned and exact for every 64-bit input in exact
//!    mode). Since `b·v = b̂·(v̂ − r) + (1 − 2b̂)(r_b·v̂ − r_b·r)` is local given `b̂`, the
//!    client computes its share `y_c` and sends `b̂` and `y_c + κ` (`κ` from the client–helper
//!    PRG); the server's output share is `y_s + y_c + κ`, the client's `−κ` (input-independent
//!    again).
//!
//! Bytes: online `16·M + 2·⌈N/8⌉` in two flights (server → client, client → server);
//! offline `16·M + 8·N + 2·K(n, N) + ⌈N/8⌉` with `K(n, N) = 16·n·N + ⌈N/8⌉` the key
//! corrections ([`crate::dcf::Corrections::wire_bytes`]). Keys held: `K(n, N)` by each of
//! client and server.
//!
//! Security (semi-honest, no collusion): the client sees `v_s + r_s` (uniform: `r_s`), one
//! DCF key (reveals nothing about `ρ_mid`) and `b̂` (uniform: `r_b`); the server sees
//! `v_c + r_c` (uniform: `r_c`), one key, `b̂` and `y_c + κ` (uniform: `κ`); the helper
//! receives nothing.

use crate::dcf::{self, Corrections, pack_bits, unpack_bits};
use crate::error::{FssError, Result};
use knapsec_core::transport::Role;
use knapsec_ring::Prg;
use knapsec_securenn::ctx::{Ctx, Pair};
use knapsec_securenn::profile::{OpKind, span};
use knapsec_securenn::select::{Groups, SelectSpec};

const R_LABEL: &str = "fss/gate/r";
const ROOT_LABEL: &str = "fss/gate/root";
const E_LABEL: &str = "fss/gate/e";
const RB_LABEL: &str = "fss/gate/rb";
const RBR_LABEL: &str = "fss/gate/rbr";
const KAPPA_LABEL: &str = "fss/gate/kappa";

/// Calls `f(pixel)` for every pixel of group `g`.
#[inline]
fn for_each(groups: &Groups, g: usize, mut f: impl FnMut(usize)) {
    match groups {
        Groups::Singles(_) => f(g),
        Groups::Csr { ptr, idx } => idx[ptr[g]..ptr[g + 1]].iter().for_each(|&i| f(i as usize)),
    }
}

/// Adds this party's share of `b·v` for every selected pixel to `acc`, from the opened
/// masked bits `b̂` of the patches: `r_b·v̂ − r_b·r` where `b̂ = 0`, and
/// `own(i) − r_b·v̂ + r_b·r` where `b̂ = 1`, `own(i)` being the party's share of `v̂ − r`
/// (so that the two parties' shares add up to `b·v`, see the module documentation).
fn add_selection(
    groups: &Groups,
    bhat: &[u8],
    rb: &[u64],
    vhat: &[u64],
    rbr: &[u64],
    own: impl Fn(usize) -> u64,
    acc: &mut [u64],
) {
    for (g, (&b, &rbg)) in bhat.iter().zip(rb).enumerate() {
        if b == 0 {
            for_each(groups, g, |i| {
                let y = rbg.wrapping_mul(vhat[i]).wrapping_sub(rbr[i]);
                acc[i] = acc[i].wrapping_add(y);
            });
        } else {
            for_each(groups, g, |i| {
                let y = own(i)
                    .wrapping_sub(rbg.wrapping_mul(vhat[i]))
                    .wrapping_add(rbr[i]);
                acc[i] = acc[i].wrapping_add(y);
            });
        }
    }
}

fn sel(spec: &SelectSpec) -> &Groups {
    spec.sel.as_ref().unwrap_or(&spec.cmp)
}

/// The patch of every pixel a decision multiplies (`u32::MAX`: none).
fn owner(spec: &SelectSpec) -> Vec<u32> {
    let mut o = vec![u32::MAX; spec.pixels];
    let s = sel(spec);
    for g in 0..spec.patches() {
        for_each(s, g, |i| o[i] = g as u32);
    }
    o
}

fn mask(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// Closed-form bytes of one gate: (offline, online).
pub fn bytes(spec: &SelectSpec) -> (u64, u64) {
    let (m, np) = (spec.pixels as u64, spec.patches() as u64);
    let bits = np.div_ceil(8);
    let k = Corrections::wire_bytes(spec.n, spec.patches()) as u64;
    (16 * m + 8 * np + 2 * k + bits, 16 * m + 2 * bits)
}

/// Bytes of DCF keys one of client and server holds for this gate.
pub fn key_bytes(spec: &SelectSpec) -> u64 {
    Corrections::wire_bytes(spec.n, spec.patches()) as u64
}

/// Bytes client and server together hold for this gate between the phases (as
/// [`GatePre::held_bytes`] counts them: the key corrections with one byte per final bit, the
/// server's half opening, bits, and shares).
pub fn held_bytes(spec: &SelectSpec) -> u64 {
    let (m, np) = (spec.pixels as u64, spec.patches() as u64);
    let keys = 16 * u64::from(spec.n) * np + np;
    2 * keys + 8 * m + np + 8 * np + 8 * m
}

/// One party's preprocessing of one gate.
#[derive(Clone, Debug)]
pub enum GatePre {
    /// The client's: its keys' corrections (the rest comes from the client–helper PRG online).
    Client {
        /// The key corrections.
        keys: Corrections,
    },
    /// The server's.
    Server {
        /// The client's half of the opening, `v_c + r_c`.
        half: Vec<u64>,
        /// The key corrections.
        keys: Corrections,
        /// Its bits `e_s`.
        e: Vec<u8>,
        /// Its shares of `r_b`.
        rb: Vec<u64>,
        /// Its shares of `r_b · r_i` per pixel.
        rbr: Vec<u64>,
    },
    /// The helper keeps nothing.
    Helper,
}

impl GatePre {
    /// Bytes this preprocessing holds in memory.
    pub fn held_bytes(&self) -> u64 {
        match self {
            GatePre::Client { keys } => held(keys),
            GatePre::Server {
                half,
                keys,
                e,
                rb,
                rbr,
            } => held(keys) + 8 * (half.len() + rb.len() + rbr.len()) as u64 + e.len() as u64,
            GatePre::Helper => 0,
        }
    }

    /// Bytes of DCF key corrections received (their wire size).
    pub fn key_bytes(&self) -> u64 {
        match self {
            GatePre::Client { keys } | GatePre::Server { keys, .. } => {
                Corrections::wire_bytes(keys.n, keys.len()) as u64
            }
            GatePre::Helper => 0,
        }
    }
}

fn held(k: &Corrections) -> u64 {
    16 * k.words.len() as u64 + k.last.len() as u64
}

fn roots(prg: &mut Prg, count: usize) -> Vec<u128> {
    (0..count)
        .map(|_| u128::from(prg.next_u64()) | (u128::from(prg.next_u64()) << 64))
        .collect()
}

fn recv_keys(ctx: &mut Ctx<'_>, spec: &SelectSpec) -> Result<Corrections> {
    let np = spec.patches();
    let bytes = ctx.recv_bytes(Role::Helper, Corrections::wire_bytes(spec.n, np))?;
    Corrections::from_bytes(spec.n, np, &bytes).ok_or_else(|| FssError::Malformed {
        role: ctx.role,
        peer: Role::Helper,
        layer: ctx.layer().to_string(),
        message: "DCF corrections of the wrong size".into(),
    })
}

/// The client's output share of a gate, `−κ` (client and helper; input-independent).
pub fn client_output(ctx: &Ctx<'_>, spec: &SelectSpec, stream: u64) -> Result<Vec<u64>> {
    let mut k = ctx
        .prg(Pair::ClientHelper, KAPPA_LABEL, stream)?
        .u64s(spec.pixels);
    k.iter_mut().for_each(|v| *v = v.wrapping_neg());
    Ok(k)
}

/// The offline phase of one gate on PRG stream `stream`. The client passes its share of the
/// pixels; the helper its private generator (for the bits `r_b`); the server nothing.
pub fn offline(
    ctx: &mut Ctx<'_>,
    spec: &SelectSpec,
    stream: u64,
    client_share: &[u64],
    private: Option<&mut Prg>,
) -> Result<GatePre> {
    let (m_len, np, n) = (spec.pixels, spec.patches(), spec.n);
    match ctx.role {
        Role::Client => {
            let mut half = ctx.prg(Pair::ClientHelper, R_LABEL, stream)?.u64s(m_len);
            half.iter_mut()
                .zip(client_share)
                .for_each(|(r, v)| *r = r.wrapping_add(*v));
            ctx.send_u64(Role::Server, &half)?;
            let keys = recv_keys(ctx, spec)?;
            Ok(GatePre::Client { keys })
        }
        Role::Server => {
            let half = ctx.recv_u64(Role::Client, m_len)?;
            let keys = recv_keys(ctx, spec)?;
            let e = ctx.recv_bytes(Role::Helper, np.div_ceil(8))?;
            let e = unpack_bits(&e, np);
            let rb = ctx.recv_u64(Role::Helper, np)?;
            let rbr = ctx.recv_u64(Role::Helper, m_len)?;
            Ok(GatePre::Server {
                half,
                keys,
                e,
                rb,
                rbr,
            })
        }
        Role::Helper => {
            let private = private.ok_or_else(|| {
                FssError::Party(knapsec_securenn::SecureNnError::Input {
                    role: Role::Helper,
                    message: "the dealer needs its private generator".into(),
                })
            })?;
            let prg_span = span(OpKind::Prg);
            let mut r = ctx.prg(Pair::ClientHelper, R_LABEL, stream)?.u64s(m_len);
            let rs = ctx.prg(Pair::ServerHelper, R_LABEL, stream)?.u64s(m_len);
            r.iter_mut()
                .zip(&rs)
                .for_each(|(a, b)| *a = a.wrapping_add(*b));
            drop(rs);
            let roots_c = roots(&mut ctx.prg(Pair::ClientHelper, ROOT_LABEL, stream)?, np);
            let roots_s = roots(&mut ctx.prg(Pair::ServerHelper, ROOT_LABEL, stream)?, np);
            let mut e = ctx.prg(Pair::ClientHelper, E_LABEL, stream)?.bits(np);
            let mut rb = ctx.prg(Pair::ClientHelper, RB_LABEL, stream)?.u64s(np);
            let mut rbr = ctx.prg(Pair::ClientHelper, RBR_LABEL, stream)?.u64s(m_len);
            let rbit = private.bits(np);
            drop(prg_span);
            let cmp_span = span(OpKind::Comparison);
            let mut alphas = vec![0u64; np];
            let nmask = mask(n);
            for g in 0..np {
                let mut rho = 0u64;
                for_each(&spec.cmp, g, |i| rho = rho.wrapping_add(r[i]));
                let t = u32::from(spec.shift[g]);
                alphas[g] = (rho >> t) & nmask;
                let rj = ((rho >> (t + n)) & 1) as u8;
                e[g] ^= rj ^ rbit[g] ^ 1;
                rb[g] = u64::from(rbit[g]).wrapping_sub(rb[g]);
            }
            let keys = dcf::generate(&dcf::Prg::default(), n, &alphas, [&roots_c, &roots_s]);
            drop(cmp_span);
            let sel_span = span(OpKind::Selection);
            let own = owner(spec);
            for (i, v) in rbr.iter_mut().enumerate() {
                let prod = match own[i] {
                    u32::MAX => 0,
                    g => u64::from(rbit[g as usize]).wrapping_mul(r[i]),
                };
                *v = prod.wrapping_sub(*v);
            }
            drop(sel_span);
            let wire = keys.to_bytes();
            ctx.send_bytes(Role::Client, wire.clone())?;
            ctx.send_bytes(Role::Server, wire)?;
            ctx.send_bytes(Role::Server, pack_bits(&e))?;
            ctx.send_u64(Role::Server, &rb)?;
            ctx.send_u64(Role::Server, &rbr)?;
            Ok(GatePre::Helper)
        }
    }
}

/// The masked patch values `â` of every patch and their compared windows.
fn windows(spec: &SelectSpec, vhat: &[u64]) -> (Vec<u64>, Vec<u8>) {
    let np = spec.patches();
    let nmask = mask(spec.n);
    let mut xs = vec![0u64; np];
    let mut top = vec![0u8; np];
    for g in 0..np {
        let mut a = 0u64;
        for_each(&spec.cmp, g, |i| a = a.wrapping_add(vhat[i]));
        a = a.wrapping_sub(spec.offset);
        let t = u32::from(spec.shift[g]);
        xs[g] = (a >> t) & nmask;
        top[g] = ((a >> (t + spec.n)) & 1) as u8;
    }
    (xs, top)
}

/// The online phase of one gate: client and server pass their shares of the `M` pixels and
/// get their shares of the `M` outputs (the client's is `−κ`). The helper does nothing.
pub fn online(
    ctx: &mut Ctx<'_>,
    spec: &SelectSpec,
    pre: &GatePre,
    stream: u64,
    share: &[u64],
) -> Result<Vec<u64>> {
    let (m_len, np) = (spec.pixels, spec.patches());
    let bits_len = np.div_ceil(8);
    let malformed = |ctx: &Ctx<'_>, peer: Role, message: &str| FssError::Malformed {
        role: ctx.role,
        peer,
        layer: ctx.layer().to_string(),
        message: message.into(),
    };
    if share.len() != m_len {
        return Err(malformed(ctx, ctx.role, "share of the wrong length"));
    }
    let layer = ctx.layer().to_string();
    let dprg = dcf::Prg::default();
    match (ctx.role, pre) {
        (
            Role::Server,
            GatePre::Server {
                half,
                keys,
                e,
                rb,
                rbr,
            },
        ) => {
            let prg_span = span(OpKind::Prg);
            let rs = ctx.prg(Pair::ServerHelper, R_LABEL, stream)?.u64s(m_len);
            let roots_s = roots(&mut ctx.prg(Pair::ServerHelper, ROOT_LABEL, stream)?, np);
            drop(prg_span);
            let sel_span = span(OpKind::Selection);
            let mut msg = Vec::with_capacity(8 * m_len + bits_len);
            let mut vhat = vec![0u64; m_len];
            for i in 0..m_len {
                let mine = share[i].wrapping_add(rs[i]);
                msg.extend_from_slice(&mine.to_le_bytes());
                vhat[i] = mine.wrapping_add(half[i]);
            }
            drop(sel_span);
            let cmp_span = span(OpKind::Comparison);
            let (xs, _) = windows(spec, &vhat);
            let mut d = vec![0u8; np];
            dcf::eval(&dprg, 1, &roots_s, keys, &xs, &mut d);
            d.iter_mut().zip(e).for_each(|(a, b)| *a ^= b);
            drop(cmp_span);
            msg.extend_from_slice(&pack_bits(&d));
            ctx.scope(&layer, "open");
            ctx.send_bytes(Role::Client, msg)?;
            ctx.scope(&layer, "select");
            let back = ctx.recv_bytes(Role::Client, bits_len + 8 * m_len)?;
            let _sel = span(OpKind::Selection);
            let bhat = unpack_bits(&back[..bits_len], np);
            let mut out: Vec<u64> = back[bits_len..]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let own = |i: usize| vhat[i].wrapping_sub(rs[i]);
            add_selection(sel(spec), &bhat, rb, &vhat, rbr, own, &mut out);
            Ok(out)
        }
        (Role::Client, GatePre::Client { keys }) => {
            let prg_span = span(OpKind::Prg);
            let rc = ctx.prg(Pair::ClientHelper, R_LABEL, stream)?.u64s(m_len);
            let roots_c = roots(&mut ctx.prg(Pair::ClientHelper, ROOT_LABEL, stream)?, np);
            let e = ctx.prg(Pair::ClientHelper, E_LABEL, stream)?.bits(np);
            let rb = ctx.prg(Pair::ClientHelper, RB_LABEL, stream)?.u64s(np);
            let rbr = ctx.prg(Pair::ClientHelper, RBR_LABEL, stream)?.u64s(m_len);
            let kappa = ctx
                .prg(Pair::ClientHelper, KAPPA_LABEL, stream)?
                .u64s(m_len);
            drop(prg_span);
            ctx.scope(&layer, "open");
            let msg = ctx.recv_bytes(Role::Server, 8 * m_len + bits_len)?;
            let sel_span = span(OpKind::Selection);
            let mut vhat: Vec<u64> = msg[..8 * m_len]
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            for i in 0..m_len {
                vhat[i] = vhat[i].wrapping_add(share[i]).wrapping_add(rc[i]);
            }
            let theirs = unpack_bits(&msg[8 * m_len..], np);
            drop(sel_span);
            let cmp_span = span(OpKind::Comparison);
            let (xs, top) = windows(spec, &vhat);
            let mut bhat = vec![0u8; np];
            dcf::eval(&dprg, 0, &roots_c, keys, &xs, &mut bhat);
            for g in 0..np {
                bhat[g] ^= top[g] ^ e[g] ^ theirs[g];
            }
            drop(cmp_span);
            let _sel = span(OpKind::Selection);
            let mut z = kappa;
            let own = |i: usize| rc[i].wrapping_neg();
            add_selection(sel(spec), &bhat, &rb, &vhat, &rbr, own, &mut z);
            let mut back = pack_bits(&bhat);
            back.reserve(8 * m_len);
            for v in &z {
                back.extend_from_slice(&v.to_le_bytes());
            }
            ctx.scope(&layer, "select");
            ctx.send_bytes(Role::Server, back)?;
            z.iter_mut().for_each(|v| *v = 0);
            drop(z);
            client_output(ctx, spec, stream)
        }
        (Role::Helper, _) => Ok(Vec::new()),
        (role, _) => Err(FssError::Party(knapsec_securenn::SecureNnError::Input {
            role,
            message: format!("layer {layer:?}: gate preprocessing of another party"),
        })),
    }
}
