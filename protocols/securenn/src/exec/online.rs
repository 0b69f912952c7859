//! The online phase of one inference (DESIGN §5, digest §6.11, §6.14): the client's input is
//! shared, every node of the graph runs on shares in order (shares are freed after their last
//! use), and the output is revealed to the client only: its logits, or just the label (map)
//! through the secure argmax.

use super::offline::{Preprocessing, Session};
use super::ops::{self, dims};
use super::plan::NodePlan;
use crate::ctx::{Ctx, Pair, stream};
use crate::error::{Result, SecureNnError};
use crate::linear;
use crate::select;
use knapsec_core::backend::PartyOutput;
use knapsec_core::transport::Role;
use knapsec_ring::RingTensor;

impl Session<'_> {
    /// The online phase: the client passes its input (`C·H·W` reals); returns what this party
    /// learns.
    pub fn online(
        &self,
        ctx: &mut Ctx<'_>,
        mut pre: Preprocessing,
        input: Option<&[f32]>,
    ) -> Result<PartyOutput> {
        let role = self.role;
        let model = self.model;
        let f = model.frac_bits;
        let n = model.nodes.len();
        // Last use of every node, to free shares early.
        let last_use = ops::last_use(model);
        let party = role != Role::Helper;
        let mut vals: Vec<Option<RingTensor>> = vec![None; n];
        let ring = |ctx: &Ctx<'_>, e| ctx.ring_err(e);
        for (i, node) in self.plan.nodes().iter().enumerate() {
            let gnode = &model.nodes[i];
            let shape = dims(gnode.shape);
            let get = |k: usize| -> &RingTensor {
                vals[gnode.inputs[k]]
                    .as_ref()
                    .expect("inputs are computed before use")
            };
            let out: RingTensor = match node {
                NodePlan::Input => {
                    ctx.scope(&gnode.name, "input");
                    match role {
                        Role::Client => {
                            let mut t = ops::client_input(ctx, input, gnode.shape, f)?;
                            let r = ctx
                                .prg(Pair::ClientServer, "securenn/input", stream(i, 0))?
                                .ring(&shape);
                            t.sub_assign(&r).map_err(|e| ring(ctx, e))?;
                            t
                        }
                        Role::Server => ctx
                            .prg(Pair::ClientServer, "securenn/input", stream(i, 0))?
                            .ring(&shape),
                        Role::Helper => RingTensor::zeros(&[0]),
                    }
                }
                NodePlan::Linear(l) => {
                    ctx.scope(&gnode.name, "linear");
                    // Each layer's preprocessing is dropped once used: a party holds only
                    // what the layers still to run need.
                    let lp = pre.linear[i].take().expect("linear preprocessing");
                    let w = self.weights[i].as_ref();
                    let x = if party {
                        get(0)
                            .clone()
                            .reshape(&l.in_dims)
                            .map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    };
                    let mut y = linear::online(ctx, l, lp, &x, w.map(|w| &w.0))?;
                    if party {
                        y.shr_arith_in_place(f);
                        if let Some((_, Some(b))) = w {
                            y.add_channel_bias(b).map_err(|e| ring(ctx, e))?;
                        }
                        y = y.reshape(&shape).map_err(|e| ring(ctx, e))?;
                    }
                    y
                }
                NodePlan::BlockRelu { chans, hw, spec } => {
                    ctx.scope(&gnode.name, "relu");
                    match spec {
                        None if party => ops::zero_channels(chans, *hw, get(0).clone()),
                        None => RingTensor::zeros(&[0]),
                        Some(s) => {
                            let v = if party {
                                ops::patch_values(chans, *hw, get(0).data(), s.pixels)
                            } else {
                                Vec::new()
                            };
                            let sel = std::mem::take(&mut pre.select[i]);
                            let y = select::online(ctx, s, &sel[0], &v)?;
                            drop((sel, v));
                            if party {
                                ops::scatter_patches(chans, *hw, get(0), y)
                                    .map_err(|e| ring(ctx, e))?
                            } else {
                                RingTensor::zeros(&[0])
                            }
                        }
                    }
                }
                NodePlan::Relu6 { spec } => {
                    ctx.scope(&gnode.name, "relu6");
                    // The spec is twinned: `x − 6` is not needed, only `x`.
                    let v: &[u64] = if party { get(0).data() } else { &[] };
                    let sel = std::mem::take(&mut pre.select[i]);
                    let y = select::online(ctx, spec, &sel[0], v)?;
                    drop(sel);
                    if party {
                        RingTensor::from_vec(&shape, ops::relu6_output(&y))
                            .map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::MaxPool { window, tree } => {
                    ctx.scope(&gnode.name, "maxpool");
                    let taps =
                        ops::pool_candidates(get(0), window, party).map_err(|e| ring(ctx, e))?;
                    let sel = std::mem::take(&mut pre.select[i]);
                    let max = tree.online(ctx, &sel, taps, party)?;
                    drop(sel);
                    if party {
                        RingTensor::from_vec(&shape, max.into_iter().next().unwrap_or_default())
                            .map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                local => {
                    let inputs: Vec<&RingTensor> = (0..gnode.inputs.len()).map(get).collect();
                    ops::local(local, &inputs, party)
                        .expect("every other op is local")
                        .map_err(|e| ring(ctx, e))?
                }
            };
            if party && out.len() != shape.iter().product::<usize>() {
                return Err(SecureNnError::Unsupported {
                    layer: gnode.name.clone(),
                    message: format!("computed {} values for shape {:?}", out.len(), gnode.shape),
                });
            }
            vals[i] = Some(out);
            for &j in &gnode.inputs {
                if last_use[j] == i {
                    vals[j] = None;
                }
            }
        }
        let out = vals[n - 1].take().unwrap_or_default();
        drop(vals);
        self.reveal(ctx, pre, out)
    }

    fn reveal(
        &self,
        ctx: &mut Ctx<'_>,
        pre: Preprocessing,
        out: RingTensor,
    ) -> Result<PartyOutput> {
        let role = self.role;
        let party = role != Role::Helper;
        let mut share = out.into_vec();
        if let Some(tree) = self.plan.argmax() {
            ctx.scope("output", "argmax");
            let [_, oh, ow] = self.model.output_shape().map(|v| v as usize);
            let size = oh * ow;
            // candidates: (value, index) shares per class
            let cands = if party {
                ops::argmax_candidates(&share, size, role == Role::Client)
            } else {
                Vec::new()
            };
            let winner = tree.online(ctx, &pre.argmax, cands, party)?;
            share = winner.into_iter().nth(1).unwrap_or_default();
        }
        ops::reveal(
            ctx,
            &share,
            self.plan.argmax().is_some(),
            self.model.frac_bits,
        )
    }
}
