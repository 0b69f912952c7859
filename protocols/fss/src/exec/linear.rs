//! Linear layers of the `fss` backend (convolution with folded BatchNorm, fully connected):
//! no online message, because the client's share is input-independent (see [`super`]).
//!
//! Offline the helper, who knows the client's input share `X_c`, sends the client
//! `conv(X_c, F) + R`; the client forms `Y_c = conv(X_c, B) + conv(X_c, F) + R = conv(X_c, W)
//! + R`, truncates it (arithmetic shift by `f`, the rule and error bound of `securenn`'s
//! [`knapsec_securenn::linear`]) and sends the server `⌊Y_c⌋ + κ`. Online the server computes
//! `⌊conv(X_s, W) − R⌋ + bias + ⌊Y_c⌋ + κ`; the client's share is `−κ`.

use super::session::Session;
use super::walk::Phase;
use crate::error::{FssError, Result};
use knapsec_core::transport::Role;
use knapsec_ring::RingTensor;
use knapsec_securenn::SecureNnError;
use knapsec_securenn::ctx::{Ctx, Pair};
use knapsec_securenn::linear::LinearSpec;
use knapsec_securenn::profile::{OpKind, span};

const LIN_R_LABEL: &str = "fss/linear/r";
const LIN_KAPPA_LABEL: &str = "fss/linear/kappa";
/// The label of the client–server session mask `B` of `securenn`'s linear setup, whose
/// setup this backend reuses.
const LIN_B_LABEL: &str = "securenn/linear/b";

/// What one linear node does in one phase for one party.
pub(super) struct LinearStep<'a> {
    /// The node's index in the graph.
    pub node: usize,
    /// The node's public work.
    pub spec: &'a LinearSpec,
    /// The node's output dimensions.
    pub shape: &'a [usize],
    /// The PRG stream of the node.
    pub stream: u64,
}

impl LinearStep<'_> {
    /// Runs the step; `x` is this party's share of the input where it computes in this phase;
    /// `pre` the server's per-node shares `⌊Y_c⌋ + κ` (filled offline, taken online). Returns
    /// this party's share of the output (empty where it computes nothing).
    pub(super) fn run(
        &self,
        session: &Session<'_>,
        ctx: &mut Ctx<'_>,
        phase: Phase,
        x: Option<&RingTensor>,
        pre: &mut [Option<Vec<u64>>],
    ) -> Result<RingTensor> {
        let (i, l, st) = (self.node, self.spec, self.stream);
        let role = session.role;
        let model = session.shared.model();
        let f = model.frac_bits;
        let name = &model.nodes[i].name;
        let ring = |ctx: &Ctx<'_>, e| FssError::from(ctx.ring_err(e));
        let out_numel: usize = l.out_dims.iter().product();
        let input = |ctx: &Ctx<'_>| -> Result<RingTensor> {
            x.expect("inputs are computed before use")
                .clone()
                .reshape(&l.in_dims)
                .map_err(|e| ring(ctx, e))
        };
        let neg_kappa = |ctx: &Ctx<'_>| -> Result<RingTensor> {
            let _prg = span(OpKind::Prg);
            Ok(ctx
                .prg(Pair::ClientHelper, LIN_KAPPA_LABEL, st)?
                .ring(self.shape)
                .neg())
        };
        let mask_r = |ctx: &Ctx<'_>| -> Result<RingTensor> {
            let _prg = span(OpKind::Prg);
            Ok(ctx
                .prg(Pair::ServerHelper, LIN_R_LABEL, st)?
                .ring(&l.out_dims))
        };
        Ok(match (role, phase) {
            (Role::Helper, Phase::Offline) => {
                let fw =
                    session.shared.masked()[i]
                        .as_ref()
                        .ok_or_else(|| SecureNnError::Input {
                            role,
                            message: format!("layer {name:?}: no setup state (masked weights)"),
                        })?;
                let x = input(ctx)?;
                let r = mask_r(ctx)?;
                let lin = span(OpKind::Linear);
                let mut m = l.apply_once(&x, fw).map_err(|e| ring(ctx, e))?;
                m.add_assign(&r).map_err(|e| ring(ctx, e))?;
                drop(lin);
                ctx.send_u64(Role::Client, m.data())?;
                neg_kappa(ctx)?
            }
            (Role::Client, Phase::Offline) => {
                let x = input(ctx)?;
                let b = {
                    let _prg = span(OpKind::Prg);
                    ctx.session_prg(Pair::ClientServer, LIN_B_LABEL, st)?
                        .ring(&l.w_dims)
                };
                let lin = span(OpKind::Linear);
                let mut y = l.apply_once(&x, &b).map_err(|e| ring(ctx, e))?;
                drop((b, lin));
                let m = ctx.recv_u64(Role::Helper, out_numel)?;
                let kappa = neg_kappa(ctx)?;
                let _lin = span(OpKind::Linear);
                y.data_mut()
                    .iter_mut()
                    .zip(&m)
                    .for_each(|(y, m)| *y = y.wrapping_add(*m));
                y.shr_arith_in_place(f);
                y.data_mut()
                    .iter_mut()
                    .zip(kappa.data())
                    .for_each(|(y, k)| *y = y.wrapping_sub(*k));
                ctx.send_u64(Role::Server, y.data())?;
                kappa
            }
            (Role::Client, Phase::Online) => neg_kappa(ctx)?,
            (Role::Server, Phase::Offline) => {
                pre[i] = Some(ctx.recv_u64(Role::Client, out_numel)?);
                RingTensor::zeros(&[0])
            }
            (Role::Server, Phase::Online) => {
                let (w, bias) =
                    session
                        .shared
                        .layer_weights(i)
                        .ok_or_else(|| SecureNnError::Input {
                            role,
                            message: "no weights".into(),
                        })?;
                let yc = pre[i].take().ok_or_else(|| SecureNnError::Input {
                    role,
                    message: format!("layer {name:?}: no offline share of the client"),
                })?;
                let x = input(ctx)?;
                let r = mask_r(ctx)?;
                let _lin = span(OpKind::Linear);
                let mut y = l.apply(&x, w).map_err(|e| ring(ctx, e))?;
                y.sub_assign(&r).map_err(|e| ring(ctx, e))?;
                y.shr_arith_in_place(f);
                if let Some(b) = bias {
                    y.add_channel_bias(b).map_err(|e| ring(ctx, e))?;
                }
                y.data_mut()
                    .iter_mut()
                    .zip(&yc)
                    .for_each(|(y, c)| *y = y.wrapping_add(*c));
                y.reshape(self.shape).map_err(|e| ring(ctx, e))?
            }
            _ => RingTensor::zeros(&[0]),
        })
    }
}
