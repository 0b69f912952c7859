//! The online phase of one inference (DESIGN §5, digest §6.11, §6.14): the client's input is
//! shared, every node of the graph runs on shares in order (shares are freed after their last
//! use), and the output is revealed to the client only: its logits, or just the label (map)
//! through the secure argmax.

use super::dims;
use super::offline::{Preprocessing, Session};
use super::plan::NodePlan;
use crate::ctx::{Ctx, Pair, stream};
use crate::error::{Result, SecureNnError};
use crate::linear;
use crate::profile::{OpKind, span};
use crate::select;
use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::transport::Role;
use knapsec_ring::{RingTensor, TapPadding, fixed, global_sum, window_sums, window_taps};

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
        let mut last_use = vec![0usize; n];
        for (i, node) in model.nodes.iter().enumerate() {
            for &j in &node.inputs {
                last_use[j] = i;
            }
        }
        last_use[n - 1] = n;
        let party = role != Role::Helper;
        let mut vals: Vec<Option<RingTensor>> = vec![None; n];
        let ring = |ctx: &Ctx<'_>, e| ctx.ring_err(e);
        for (i, node) in self.plan.nodes.iter().enumerate() {
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
                    let numel: usize = shape.iter().product();
                    match role {
                        Role::Client => {
                            let x = input.ok_or_else(|| SecureNnError::Input {
                                role,
                                message: "the client needs an input".into(),
                            })?;
                            if x.len() != numel {
                                return Err(SecureNnError::Input {
                                    role,
                                    message: format!(
                                        "input has {} values, the model expects {numel} ({:?})",
                                        x.len(),
                                        gnode.shape
                                    ),
                                });
                            }
                            if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
                                return Err(SecureNnError::Input {
                                    role,
                                    message: format!("input value {bad} is not finite"),
                                });
                            }
                            let mut t =
                                RingTensor::encode_f32(&shape, x, f).map_err(|e| ring(ctx, e))?;
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
                        None if party => {
                            let mut x = get(0).clone();
                            for (c, b) in chans.iter().enumerate() {
                                if *b == BlockSize::Zero {
                                    x.data_mut()[c * hw..(c + 1) * hw].fill(0);
                                }
                            }
                            x
                        }
                        None => RingTensor::zeros(&[0]),
                        Some(s) => {
                            let x = if party { get(0).data() } else { &[][..] };
                            let mut v = Vec::with_capacity(if party { s.pixels } else { 0 });
                            if party {
                                for (c, b) in chans.iter().enumerate() {
                                    if matches!(b, BlockSize::Patch { .. }) {
                                        v.extend_from_slice(&x[c * hw..(c + 1) * hw]);
                                    }
                                }
                            }
                            let sel = std::mem::take(&mut pre.select[i]);
                            let y = select::online(ctx, s, &sel[0], &v)?;
                            drop((sel, v));
                            let all_active =
                                chans.iter().all(|b| matches!(b, BlockSize::Patch { .. }));
                            if party && all_active {
                                // Every channel selected: the outputs in order, no copy.
                                RingTensor::from_vec(&shape, y).map_err(|e| ring(ctx, e))?
                            } else if party {
                                let mut out = get(0).clone();
                                let mut k = 0;
                                for (c, b) in chans.iter().enumerate() {
                                    let dst = &mut out.data_mut()[c * hw..(c + 1) * hw];
                                    match b {
                                        BlockSize::Patch { .. } => {
                                            dst.copy_from_slice(&y[k * hw..(k + 1) * hw]);
                                            k += 1;
                                        }
                                        BlockSize::Zero => dst.fill(0),
                                        BlockSize::Identity => {}
                                    }
                                }
                                out
                            } else {
                                RingTensor::zeros(&[0])
                            }
                        }
                    }
                }
                NodePlan::Relu6 { spec } => {
                    ctx.scope(&gnode.name, "relu6");
                    let mut v = Vec::new();
                    if party {
                        let x = get(0).data();
                        v.extend_from_slice(x);
                        let six = if role == Role::Client { 6u64 << f } else { 0 };
                        v.extend(x.iter().map(|a| a.wrapping_sub(six)));
                    }
                    let sel = std::mem::take(&mut pre.select[i]);
                    let y = select::online(ctx, spec, &sel[0], &v)?;
                    drop((sel, v));
                    if party {
                        let m = y.len() / 2;
                        let d = (0..m).map(|k| y[k].wrapping_sub(y[m + k])).collect();
                        RingTensor::from_vec(&shape, d).map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::AvgPool {
                    kernel,
                    stride,
                    padding,
                    counts,
                } => {
                    if party {
                        let _pool = span(OpKind::Pooling);
                        let mut s = window_sums(get(0), *kernel, *stride, *padding)
                            .map_err(|e| ring(ctx, e))?;
                        let plane = counts.len();
                        for (k, v) in s.data_mut().iter_mut().enumerate() {
                            *v = (*v as i64).div_euclid(counts[k % plane].max(1) as i64) as u64;
                        }
                        s
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::GlobalAvgPool { count } => {
                    if party {
                        let _pool = span(OpKind::Pooling);
                        let mut s = global_sum(get(0)).map_err(|e| ring(ctx, e))?;
                        s.data_mut()
                            .iter_mut()
                            .for_each(|v| *v = (*v as i64).div_euclid(*count as i64) as u64);
                        s
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::MaxPool {
                    kernel,
                    stride,
                    padding,
                    tree,
                } => {
                    ctx.scope(&gnode.name, "maxpool");
                    let taps: Vec<Vec<Vec<u64>>> = if party {
                        let _pool = span(OpKind::Pooling);
                        window_taps(get(0), *kernel, *stride, *padding, TapPadding::Edge)
                            .map_err(|e| ring(ctx, e))?
                            .into_iter()
                            .map(|t| vec![t.into_vec()])
                            .collect()
                    } else {
                        Vec::new()
                    };
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
                NodePlan::Add => {
                    if party {
                        let mut s = get(0).clone();
                        for k in 1..gnode.inputs.len() {
                            s.add_assign(get(k)).map_err(|e| ring(ctx, e))?;
                        }
                        s
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::Concat => {
                    if party {
                        let parts: Vec<&RingTensor> = (0..gnode.inputs.len()).map(get).collect();
                        RingTensor::concat_channels(&parts).map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    }
                }
                NodePlan::Broadcast { h, w } => {
                    if party {
                        get(0).broadcast_hw(*h, *w).map_err(|e| ring(ctx, e))?
                    } else {
                        RingTensor::zeros(&[0])
                    }
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
        ctx.scope("output", "reveal");
        let mut share = out.into_vec();
        if let Some(tree) = &self.plan.argmax {
            ctx.scope("output", "argmax");
            let [_, oh, ow] = self.model.output_shape().map(|v| v as usize);
            let size = oh * ow;
            // candidates: (value, index) shares per class
            let cands: Vec<Vec<Vec<u64>>> = if party {
                share
                    .chunks(size)
                    .enumerate()
                    .map(|(c, v)| {
                        vec![
                            v.to_vec(),
                            vec![if role == Role::Client { c as u64 } else { 0 }; size],
                        ]
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let winner = tree.online(ctx, &pre.argmax, cands, party)?;
            share = winner.into_iter().nth(1).unwrap_or_default();
            ctx.scope("output", "reveal");
        }
        match role {
            Role::Server => {
                ctx.send_u64(Role::Client, &share)?;
                Ok(PartyOutput::Nothing)
            }
            Role::Helper => Ok(PartyOutput::Nothing),
            Role::Client => {
                let other = ctx.recv_u64(Role::Server, share.len())?;
                let full: Vec<u64> = share
                    .iter()
                    .zip(&other)
                    .map(|(a, b)| a.wrapping_add(*b))
                    .collect();
                if self.plan.argmax.is_none() {
                    Ok(PartyOutput::Logits(
                        full.iter()
                            .map(|&v| fixed::decode(v, self.model.frac_bits) as f32)
                            .collect(),
                    ))
                } else {
                    Ok(PartyOutput::Labels(
                        full.iter().map(|&v| v as u32).collect(),
                    ))
                }
            }
        }
    }
}
