//! One walk of a party over the graph in one phase of the `fss` backend (DESIGN §5): the
//! client and the helper run the client's shadow shares offline, the server its shares
//! online, every node in order on `securenn`'s plan, the gates of the ReLU family
//! ([`crate::gate`]) in the same order in both phases. The share-local parts of the ops are
//! `securenn`'s ([`knapsec_securenn::exec::ops`]), so both backends compute the same values.

use super::linear::LinearStep;
use super::session::{Preprocessing, Session};
use crate::error::{FssError, Result};
use crate::gate::{self, GatePre};
use knapsec_core::transport::Role;
use knapsec_ring::{Prg, RingTensor};
use knapsec_securenn::SecureNnError;
use knapsec_securenn::ctx::{Ctx, Pair, stream};
use knapsec_securenn::exec::NodePlan;
use knapsec_securenn::exec::ops::{self, dims};
use knapsec_securenn::profile::{OpKind, span};
use knapsec_securenn::select::SelectSpec;

const INPUT_LABEL: &str = "fss/input";

/// The two phases of an inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Offline,
    Online,
}

/// The gates of one walk over the graph, in the order they run (the same in both phases).
struct Runner<'p> {
    phase: Phase,
    /// True if this party holds values in this phase (client: both; helper: offline;
    /// server: online).
    computing: bool,
    gates: &'p mut Vec<GatePre>,
    cursor: usize,
    private: Option<&'p mut Prg>,
}

impl Runner<'_> {
    fn gate(
        &mut self,
        ctx: &mut Ctx<'_>,
        spec: &SelectSpec,
        st: u64,
        values: &[u64],
    ) -> Result<Vec<u64>> {
        match self.phase {
            Phase::Offline => {
                let pre = gate::offline(ctx, spec, st, values, self.private.as_deref_mut())?;
                self.gates.push(pre);
                if self.computing {
                    gate::client_output(ctx, spec, st)
                } else {
                    Ok(Vec::new())
                }
            }
            Phase::Online => {
                let pre = self.gates.get(self.cursor).ok_or_else(|| {
                    FssError::Party(SecureNnError::Input {
                        role: ctx.role,
                        message: "fewer gate preprocessings than gates".into(),
                    })
                })?;
                self.cursor += 1;
                gate::online(ctx, spec, pre, st, values)
            }
        }
    }
}

/// One walk over the graph in `phase`; returns this party's share of the output (the label
/// after the argmax, or the logits), empty where it computes nothing.
pub(super) fn walk(
    session: &Session<'_>,
    ctx: &mut Ctx<'_>,
    phase: Phase,
    pre: &mut Preprocessing,
    input: Option<&[f32]>,
    private: Option<&mut Prg>,
) -> Result<Vec<u64>> {
    let role = session.role;
    let model = session.shared.model();
    let plan = session.shared.plan();
    let f = model.frac_bits;
    let n = model.nodes.len();
    let computing = match role {
        Role::Client => true,
        Role::Helper => phase == Phase::Offline,
        Role::Server => phase == Phase::Online,
    };
    // The client's share carries the public constants (ReLU6's 6, the argmax's indices); the
    // helper repeats the client's arithmetic.
    let client_side = role != Role::Server;
    let last_use = ops::last_use(model);
    let mut vals: Vec<Option<RingTensor>> = vec![None; n];
    let mut linear_pre = std::mem::take(&mut pre.linear);
    let mut runner = Runner {
        phase,
        computing,
        gates: &mut pre.gates,
        cursor: 0,
        private,
    };
    let empty = || RingTensor::zeros(&[0]);
    let ring = |ctx: &Ctx<'_>, e| FssError::from(ctx.ring_err(e));
    for (i, node) in plan.nodes().iter().enumerate() {
        let gnode = &model.nodes[i];
        let shape = dims(gnode.shape);
        let numel: usize = shape.iter().product();
        let st = stream(i, 0);
        let get = |k: usize| -> &RingTensor {
            vals[gnode.inputs[k]]
                .as_ref()
                .expect("inputs are computed before use")
        };
        let op = |name: &'static str| {
            if phase == Phase::Offline {
                "offline"
            } else {
                name
            }
        };
        let out: RingTensor = match node {
            NodePlan::Input => {
                ctx.scope(&gnode.name, op("input"));
                if computing && client_side {
                    let a = {
                        let _prg = span(OpKind::Prg);
                        ctx.prg(Pair::ClientHelper, INPUT_LABEL, st)?.ring(&shape)
                    };
                    if role == Role::Client && phase == Phase::Online {
                        let mut t = ops::client_input(ctx, input, gnode.shape, f)?;
                        t.add_assign(&a).map_err(|e| ring(ctx, e))?;
                        ctx.send_u64(Role::Server, t.data())?;
                    }
                    a.neg()
                } else if computing {
                    let x = ctx.recv_u64(Role::Client, numel)?;
                    RingTensor::from_vec(&shape, x).map_err(|e| ring(ctx, e))?
                } else {
                    empty()
                }
            }
            NodePlan::Linear(l) => {
                ctx.scope(&gnode.name, op("linear"));
                let step = LinearStep {
                    node: i,
                    spec: l,
                    shape: &shape,
                    stream: st,
                };
                let x = computing.then(|| get(0));
                step.run(session, ctx, phase, x, &mut linear_pre)?
            }
            NodePlan::BlockRelu { chans, hw, spec } => {
                ctx.scope(&gnode.name, op("relu"));
                match spec {
                    None if computing => ops::zero_channels(chans, *hw, get(0).clone()),
                    None => empty(),
                    Some(s) => {
                        let v = if computing {
                            ops::patch_values(chans, *hw, get(0).data(), s.pixels)
                        } else {
                            Vec::new()
                        };
                        let y = runner.gate(ctx, s, st, &v)?;
                        if computing {
                            ops::scatter_patches(chans, *hw, get(0), y).map_err(|e| ring(ctx, e))?
                        } else {
                            empty()
                        }
                    }
                }
            }
            NodePlan::Relu6 { spec } => {
                ctx.scope(&gnode.name, op("relu6"));
                let v = if computing {
                    let six = if client_side { 6u64 << f } else { 0 };
                    ops::relu6_values(get(0).data(), six)
                } else {
                    Vec::new()
                };
                let y = runner.gate(ctx, spec, st, &v)?;
                if computing {
                    RingTensor::from_vec(&shape, ops::relu6_output(&y)).map_err(|e| ring(ctx, e))?
                } else {
                    empty()
                }
            }
            NodePlan::MaxPool { window, tree } => {
                ctx.scope(&gnode.name, op("maxpool"));
                let taps =
                    ops::pool_candidates(get(0), window, computing).map_err(|e| ring(ctx, e))?;
                let max = tree.run(taps, computing, |k, s, d| {
                    runner.gate(ctx, s, stream(i, k), d)
                })?;
                if computing {
                    RingTensor::from_vec(&shape, max.into_iter().next().unwrap_or_default())
                        .map_err(|e| ring(ctx, e))?
                } else {
                    empty()
                }
            }
            local => {
                let inputs: Vec<&RingTensor> = (0..gnode.inputs.len()).map(get).collect();
                ops::local(local, &inputs, computing)
                    .expect("every other op is local")
                    .map_err(|e| ring(ctx, e))?
            }
        };
        if computing && out.len() != numel {
            return Err(SecureNnError::Unsupported {
                layer: gnode.name.clone(),
                message: format!("computed {} values for shape {:?}", out.len(), gnode.shape),
            }
            .into());
        }
        vals[i] = Some(out);
        for &j in &gnode.inputs {
            if last_use[j] == i {
                vals[j] = None;
            }
        }
    }
    let mut share = vals[n - 1].take().unwrap_or_default().into_vec();
    if let Some(tree) = plan.argmax() {
        ctx.scope(
            "output",
            if phase == Phase::Offline {
                "offline"
            } else {
                "argmax"
            },
        );
        let [_, oh, ow] = model.output_shape().map(|v| v as usize);
        let cands = if computing {
            ops::argmax_candidates(&share, oh * ow, client_side)
        } else {
            Vec::new()
        };
        let winner = tree.run(cands, computing, |k, s, d| {
            runner.gate(ctx, s, stream(n, k), d)
        })?;
        share = winner.into_iter().nth(1).unwrap_or_default();
    }
    pre.linear = linear_pre;
    Ok(share)
}
