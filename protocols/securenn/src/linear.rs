//! Secure linear layers (convolution with folded BatchNorm, fully connected) without sending
//! the weights on every inference (digest §6.5, fixing §10.14).
//!
//! The server holds `W`; activations are shared `X = X₀ + X₁` (client, server).
//!
//! * **Setup, once per session.** Client and server draw a weight mask `B` from their common
//!   *session* PRG; the server sends `F = W − B` to the helper (`8·|W|` bytes, once). The
//!   helper sees a uniformly random tensor; the client knows `B` but never sees `F`.
//! * **Offline, per inference.** Client and helper draw a fresh `A` (activation-sized,
//!   client–helper PRG); server and helper draw a fresh `R` (output-sized, server–helper PRG).
//!   The helper sends the client `conv(A, F) + R` (`8·|Y|` bytes); the client's output share
//!   is `Y₀ = conv(A, B) + conv(A, F) + R = conv(A, W) + R`, known before the input exists.
//! * **Online.** The client sends `E = X₀ − A` (`8·|X|` bytes, one message, uniform to the
//!   server); the server's share is `Y₁ = conv(X₁ + E, W) − R`. Then
//!   `Y₀ + Y₁ = conv(A, W) + conv(X − A, W) = conv(X, W)`. The client draws `A` and the
//!   server `R` again from the same streams here rather than holding them from the offline
//!   phase (only `Y₀` is held: it came from the helper).
//!
//! Security: `B` is fixed per session but `F` is revealed once and only to the helper; `A`
//! and `R` are fresh per inference, so `E` and `conv(A, F) + R` are uniform to their
//! receivers. One convolution runs online (server), two offline (client and helper). The
//! online one multiplies by the plaintext weights, whose fixed-point entries are small
//! (`|w| < 2³⁹`): the ring product detects that and needs two 52-bit multiply-adds per product
//! instead of three (`knapsec_ring::gemm`, small left operands). The server's `W` is held for
//! the session prepared for the ring kernel ([`LayerWeights`]); the helper's `F` is held as it
//! came (used once per inference, prepared when used: half the memory); the client's `B` is
//! drawn anew per inference and used as it is.
//!
//! **Truncation** (digest §6.7): products carry `2f` fractional bits; each party shifts its
//! own share right by `f` (arithmetic shift, SecureML style). With `Y₀` uniform, the result
//! is `⌊Y/2^f⌋ − e`, `e ∈ {0, 1}`, except with probability about `|Y|/2^64` per element
//! (when the uniform share `Y₀` falls in the window of `|Y|` values where `Y₀ + Y₁` wraps
//! past ±2^63 as signed integers), where it is off by about `2^(64−f)`. Nothing detects that
//! event; with `|Y| < 2^40` it has probability below 2^−24 per element. Inputs are clamped
//! to the range of `knapsec_ring::fixed::input_bound`, so no input can push `|Y|` near 2^63.

use crate::ctx::{Ctx, Pair, stream};
use crate::error::{Result, SecureNnError};
use crate::profile::{OpKind, span};
use knapsec_core::transport::Role;
use knapsec_ring::{
    Conv2dParams, PreparedConv, RingError, RingTensor, conv2d, conv2d_prepared, linear,
};

/// A linear layer of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearSpec {
    /// Graph node index (PRG stream id).
    pub node: usize,
    /// `None` for a fully connected layer.
    pub conv: Option<Conv2dParams>,
    /// Input dimensions.
    pub in_dims: Vec<usize>,
    /// Weight dimensions.
    pub w_dims: Vec<usize>,
    /// Output dimensions.
    pub out_dims: Vec<usize>,
    /// Name of the weight tensor in the model's weights.
    pub weight: String,
    /// Name of the bias tensor, if the layer has one.
    pub bias: Option<String>,
}

/// A layer's weights held for a session (the server's `W`, the helper's `F`): a
/// convolution's prepared once for the products of every inference
/// ([`knapsec_ring::PreparedConv`]: the ring kernel's second operands are not made anew per
/// inference); a fully connected layer's as they are (its product is matrix–vector).
#[derive(Clone, Debug)]
pub enum LayerWeights {
    /// A convolution's weights, prepared ([`knapsec_ring::PreparedConv`]).
    Conv(PreparedConv),
    /// A fully connected layer's weights, `[out, in]`.
    Dense(RingTensor),
}

impl LayerWeights {
    /// `w` prepared for the products of layer `spec`.
    pub fn new(spec: &LinearSpec, w: RingTensor) -> Result<Self, RingError> {
        Ok(match &spec.conv {
            Some(p) => Self::Conv(PreparedConv::new(&w, p)?),
            None => Self::Dense(w),
        })
    }

    /// The weights as a tensor.
    pub fn tensor(&self) -> RingTensor {
        match self {
            Self::Conv(p) => p.weights(),
            Self::Dense(w) => w.clone(),
        }
    }
}

impl LinearSpec {
    /// The layer's product with weights held for the session.
    pub fn apply(&self, x: &RingTensor, w: &LayerWeights) -> Result<RingTensor, RingError> {
        match w {
            LayerWeights::Conv(p) => conv2d_prepared(x, p),
            LayerWeights::Dense(w) => linear(x, w),
        }
    }

    /// The layer's product with weights used once (the client's mask `B`, drawn anew from
    /// the session PRG for each inference rather than kept).
    pub fn apply_once(&self, x: &RingTensor, w: &RingTensor) -> Result<RingTensor, RingError> {
        match &self.conv {
            Some(p) => conv2d(x, w, p),
            None => linear(x, w),
        }
    }

    fn numel(d: &[usize]) -> usize {
        d.iter().product()
    }

    /// Setup bytes (once per session): `8·|W|`.
    pub fn setup_bytes(&self) -> u64 {
        8 * Self::numel(&self.w_dims) as u64
    }

    /// Offline bytes per inference: `8·|Y|`.
    pub fn offline_bytes(&self) -> u64 {
        8 * Self::numel(&self.out_dims) as u64
    }

    /// Online bytes per inference: `8·|X|`.
    pub fn online_bytes(&self) -> u64 {
        8 * Self::numel(&self.in_dims) as u64
    }
}

const B_LABEL: &str = "securenn/linear/b";
const A_LABEL: &str = "securenn/linear/a";
const R_LABEL: &str = "securenn/linear/r";

/// The helper's per-session state of one layer: `F = W − B`, as received. It is used once
/// per inference (the product `conv(A, F)` of the offline phase), so it is kept as it came
/// rather than prepared for the ring kernel: the prepared form takes about twice the memory
/// for the whole session, and preparing a layer's `F` when it is used costs little against
/// its product.
pub type HelperWeights = RingTensor;

/// Server side of the setup: sends `F = W − B` to the helper.
pub fn setup_server(ctx: &mut Ctx<'_>, spec: &LinearSpec, w: &LayerWeights) -> Result<()> {
    let b = ctx
        .session_prg(Pair::ClientServer, B_LABEL, stream(spec.node, 0))?
        .ring(&spec.w_dims);
    let f = w.tensor().sub(&b).map_err(|e| ctx.ring_err(e))?;
    ctx.send_u64(Role::Helper, f.data())
}

/// Helper side of the setup: receives `F`.
pub fn setup_helper(ctx: &mut Ctx<'_>, spec: &LinearSpec) -> Result<HelperWeights> {
    let f = ctx.recv_u64(Role::Server, LinearSpec::numel(&spec.w_dims))?;
    RingTensor::from_vec(&spec.w_dims, f).map_err(|e| ctx.ring_err(e))
}

/// One party's preprocessing of one linear layer.
#[derive(Clone, Debug)]
pub enum LinearPre {
    /// The output share `Y₀` (before truncation); the mask `A` is drawn again online from
    /// the client–helper stream rather than held.
    Client {
        /// The client's share `Y₀`.
        y0: RingTensor,
    },
    /// Nothing: the output mask `R` is drawn online from the server–helper stream.
    Server,
    /// The helper keeps nothing (it sent its shares in the offline phase).
    Helper,
}

/// The offline phase of one layer. `f` is the helper's setup state (ignored by the others).
pub fn offline(
    ctx: &mut Ctx<'_>,
    spec: &LinearSpec,
    f: Option<&HelperWeights>,
) -> Result<LinearPre> {
    let st = stream(spec.node, 0);
    match ctx.role {
        Role::Client => {
            let prg = span(OpKind::Prg);
            let a = ctx
                .prg(Pair::ClientHelper, A_LABEL, st)?
                .ring(&spec.in_dims);
            let b = ctx
                .session_prg(Pair::ClientServer, B_LABEL, st)?
                .ring(&spec.w_dims);
            drop(prg);
            let lin = span(OpKind::Linear);
            let mut y0 = spec.apply_once(&a, &b).map_err(|e| ctx.ring_err(e))?;
            drop((a, b, lin));
            let m = ctx.recv_u64(Role::Helper, LinearSpec::numel(&spec.out_dims))?;
            let _lin = span(OpKind::Linear);
            y0.data_mut()
                .iter_mut()
                .zip(&m)
                .for_each(|(y, m)| *y = y.wrapping_add(*m));
            Ok(LinearPre::Client { y0 })
        }
        Role::Server => Ok(LinearPre::Server),
        Role::Helper => {
            let f = f.ok_or_else(|| SecureNnError::Input {
                role: Role::Helper,
                message: format!("layer {:?}: no setup state (masked weights)", ctx.layer()),
            })?;
            let prg = span(OpKind::Prg);
            let a = ctx
                .prg(Pair::ClientHelper, A_LABEL, st)?
                .ring(&spec.in_dims);
            let r = ctx
                .prg(Pair::ServerHelper, R_LABEL, st)?
                .ring(&spec.out_dims);
            drop(prg);
            let lin = span(OpKind::Linear);
            let mut m = spec.apply_once(&a, f).map_err(|e| ctx.ring_err(e))?;
            m.add_assign(&r).map_err(|e| ctx.ring_err(e))?;
            drop((a, r, lin));
            ctx.send_u64(Role::Client, m.data())?;
            Ok(LinearPre::Helper)
        }
    }
}

/// The online phase: this party's share of `conv(X, W)` at `2f` fractional bits (no
/// truncation, no bias). `x` is this party's input share (client, server); `w` the server's
/// weights.
pub fn online(
    ctx: &mut Ctx<'_>,
    spec: &LinearSpec,
    pre: LinearPre,
    x: &RingTensor,
    w: Option<&LayerWeights>,
) -> Result<RingTensor> {
    match (ctx.role, pre) {
        (Role::Client, LinearPre::Client { y0 }) => {
            let prg = span(OpKind::Prg);
            let a = ctx
                .prg(Pair::ClientHelper, A_LABEL, stream(spec.node, 0))?
                .ring(&spec.in_dims);
            drop(prg);
            let lin = span(OpKind::Linear);
            let e = x.sub(&a).map_err(|e| ctx.ring_err(e))?;
            drop((a, lin));
            ctx.send_u64(Role::Server, e.data())?;
            Ok(y0)
        }
        (Role::Server, LinearPre::Server) => {
            let w = w.ok_or_else(|| SecureNnError::Input {
                role: Role::Server,
                message: "no weights".into(),
            })?;
            let e = ctx.recv_u64(Role::Server.others()[0], x.len())?;
            let _lin = span(OpKind::Linear);
            let mut xe = x.clone();
            xe.data_mut()
                .iter_mut()
                .zip(&e)
                .for_each(|(a, b)| *a = a.wrapping_add(*b));
            let mut y = spec.apply(&xe, w).map_err(|e| ctx.ring_err(e))?;
            drop((xe, _lin));
            let r = {
                let _prg = span(OpKind::Prg);
                ctx.prg(Pair::ServerHelper, R_LABEL, stream(spec.node, 0))?
                    .ring(&spec.out_dims)
            };
            let _lin = span(OpKind::Linear);
            y.sub_assign(&r).map_err(|e| ctx.ring_err(e))?;
            Ok(y)
        }
        (Role::Helper, LinearPre::Helper) => Ok(RingTensor::zeros(&[0])),
        (role, _) => Err(SecureNnError::Input {
            role,
            message: "linear layer: preprocessing of another party".into(),
        }),
    }
}
