//! The graph executor: runs a whole [`SecureModel`] for one party, in three phases
//! (DESIGN §5, digest §6.4, §6.7, §6.11, §6.14):
//!
//! * [`Session::setup`] (once per session): the server sends its masked weights to the
//!   helper ([`crate::linear`]).
//! * [`Session::offline`] (per inference, before the input exists): linear-layer masks and
//!   the helper's `conv(A, F)`, selection masks and PrivateCompare bit shares
//!   ([`crate::select`]).
//! * [`Session::online`]: the input is shared (client share `X − R`, server share `R` from
//!   their common PRG, no message), every node runs on shares, and the output is revealed to
//!   the client only: its logits, or just the label (map) by a secure argmax.
//!
//! Fixed-point semantics per op (the same as `knapsec-plain`, up to the stated errors):
//! linear layers compute the product at `2f` fractional bits, truncate by `f` (local shift,
//! error `−1..0` ulp, see [`crate::linear`]) and add the bias; a block ReLU keeps a patch
//! iff its sum is `> 0`; ReLU6 is `ReLU(x) − ReLU(x − 6)`; average pooling and global
//! average pooling floor-divide the window sum by the divisor on each share (error `−1..0`
//! ulp; the same rare wrap event as truncation); max pooling is a tree of `b + ReLU(a − b)`
//! over the window's taps (edge padding); add, concat and broadcast are local and exact.
//! The secure argmax keeps the lower index on ties and always uses exact DReLUs (a wrapped
//! approximate comparison would pick a wrong label).

use crate::ctx::{Ctx, Pair, stream};
use crate::error::{Result, SecureNnError};
use crate::linear::{self, HelperWeights, LayerWeights, LinearPre, LinearSpec};
use crate::options::{DreluMode, Options, Reveal};
use crate::select::{self, Groups, SelectPre, SelectSpec};
use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, Op, SecureModel};
use knapsec_core::transport::Role;
use knapsec_ring::{
    Conv2dParams, RingTensor, TapPadding, fixed, global_sum, window_counts, window_sums,
    window_taps,
};

/// What one node does, with everything public precomputed.
#[derive(Clone, Debug)]
enum NodePlan {
    Input,
    Linear(LinearSpec),
    BlockRelu {
        chans: Vec<BlockSize>,
        hw: usize,
        spec: Option<SelectSpec>,
    },
    Relu6 {
        spec: SelectSpec,
    },
    AvgPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        counts: Vec<u64>,
    },
    MaxPool {
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        levels: Vec<SelectSpec>,
    },
    GlobalAvgPool {
        count: u64,
    },
    Add,
    Concat,
    Broadcast {
        h: usize,
        w: usize,
    },
}

/// The public plan of a model under some options.
#[derive(Clone, Debug)]
pub struct Plan {
    nodes: Vec<NodePlan>,
    argmax: Vec<SelectSpec>,
    options: Options,
}

fn usz(a: [u32; 2]) -> [usize; 2] {
    [a[0] as usize, a[1] as usize]
}

fn dims(s: [u32; 3]) -> Vec<usize> {
    s.iter().map(|&v| v as usize).collect()
}

/// Select specs of a pairwise max tree over `taps` candidates of `size` elements.
fn max_tree(mut taps: usize, size: usize, mode: DreluMode) -> Result<Vec<SelectSpec>> {
    let mut levels = Vec::new();
    while taps > 1 {
        let pairs = taps / 2;
        levels.push(SelectSpec::new(
            pairs * size,
            Groups::Singles(pairs * size),
            None,
            0,
            mode,
        )?);
        taps -= pairs;
    }
    Ok(levels)
}

/// Select specs of the argmax tree over `classes` candidates of `size` pixels: per level, the
/// pixels are `[d (pairs·size), e (pairs·size)]`, one decision per `d`, selecting `d` and `e`.
fn argmax_tree(mut classes: usize, size: usize) -> Result<Vec<SelectSpec>> {
    let mut levels = Vec::new();
    while classes > 1 {
        let pairs = classes / 2;
        let n = pairs * size;
        let ptr = (0..=n).map(|g| 2 * g).collect();
        let idx = (0..n).flat_map(|g| [g as u32, (g + n) as u32]).collect();
        levels.push(SelectSpec::new(
            2 * n,
            Groups::Singles(n),
            Some(Groups::Csr { ptr, idx }),
            0,
            DreluMode::Exact,
        )?);
        classes -= pairs;
    }
    Ok(levels)
}

/// Patches of a block-ReLU layer over its active (patch) channels, pixels numbered
/// channel-major among active channels.
fn block_groups(chans: &[BlockSize], h: usize, w: usize) -> Groups {
    let active: Vec<(u32, u32)> = chans
        .iter()
        .filter_map(|b| {
            if let BlockSize::Patch { h, w } = *b {
                Some((h, w))
            } else {
                None
            }
        })
        .collect();
    if active.iter().all(|&p| p == (1, 1)) {
        return Groups::Singles(active.len() * h * w);
    }
    let mut ptr = vec![0usize];
    let mut idx = Vec::with_capacity(active.len() * h * w);
    for (k, &(bh, bw)) in active.iter().enumerate() {
        let (bh, bw) = (bh as usize, bw as usize);
        let base = k * h * w;
        for py in 0..h.div_ceil(bh) {
            for px in 0..w.div_ceil(bw) {
                for y in py * bh..((py + 1) * bh).min(h) {
                    for x in px * bw..((px + 1) * bw).min(w) {
                        idx.push((base + y * w + x) as u32);
                    }
                }
                ptr.push(idx.len());
            }
        }
    }
    Groups::Csr { ptr, idx }
}

impl Plan {
    /// Plans `model` under `options`; refuses what this backend cannot run.
    pub fn new(model: &SecureModel, options: Options) -> Result<Self> {
        model.validate().map_err(|e| SecureNnError::Input {
            role: Role::Client,
            message: e.to_string(),
        })?;
        let mode = options.drelu;
        let mut nodes = Vec::with_capacity(model.nodes.len());
        for (i, node) in model.nodes.iter().enumerate() {
            let unsupported = |m: String| SecureNnError::Unsupported {
                layer: node.name.clone(),
                message: m,
            };
            let input = node
                .inputs
                .first()
                .map(|&j| model.nodes[j].shape)
                .unwrap_or(node.shape);
            let [c, h, w] = node.shape.map(|v| v as usize);
            let plan = match &node.op {
                Op::Input => NodePlan::Input,
                Op::Conv2d {
                    weight,
                    bias,
                    kernel,
                    stride,
                    padding,
                    dilation,
                    groups,
                } => {
                    let p =
                        Conv2dParams::from_graph(*kernel, *stride, *padding, *dilation, *groups);
                    let g = (*groups).max(1) as usize;
                    if !(input[0] as usize).is_multiple_of(g) || !c.is_multiple_of(g) {
                        return Err(unsupported(format!(
                            "groups {g} do not divide channels {} -> {c}",
                            input[0]
                        )));
                    }
                    let (ho, wo) = p
                        .output_hw(input[1] as usize, input[2] as usize)
                        .map_err(|e| unsupported(e.to_string()))?;
                    if (ho, wo) != (h, w) {
                        return Err(unsupported(format!(
                            "output {ho}x{wo} differs from the graph's {h}x{w}"
                        )));
                    }
                    NodePlan::Linear(LinearSpec {
                        node: i,
                        conv: Some(p),
                        in_dims: dims(input),
                        w_dims: vec![
                            c,
                            input[0] as usize / g,
                            kernel[0] as usize,
                            kernel[1] as usize,
                        ],
                        out_dims: dims(node.shape),
                        weight: weight.clone(),
                        bias: bias.clone(),
                    })
                }
                Op::Linear { weight, bias } => NodePlan::Linear(LinearSpec {
                    node: i,
                    conv: None,
                    in_dims: dims(input),
                    w_dims: vec![c, (input[0] * input[1] * input[2]) as usize],
                    out_dims: dims(node.shape),
                    weight: weight.clone(),
                    bias: bias.clone(),
                }),
                Op::BlockRelu { blocks, .. } => {
                    let active = blocks
                        .iter()
                        .filter(|b| matches!(b, BlockSize::Patch { .. }))
                        .count();
                    let spec = if active == 0 {
                        None
                    } else {
                        Some(SelectSpec::new(
                            active * h * w,
                            block_groups(blocks, h, w),
                            None,
                            1,
                            mode,
                        )?)
                    };
                    NodePlan::BlockRelu {
                        chans: blocks.clone(),
                        hw: h * w,
                        spec,
                    }
                }
                Op::Relu6 { .. } => {
                    let m = c * h * w;
                    NodePlan::Relu6 {
                        spec: SelectSpec::new(2 * m, Groups::Singles(2 * m), None, 0, mode)?,
                    }
                }
                Op::AvgPool {
                    kernel,
                    stride,
                    padding,
                    count_include_pad,
                } => {
                    let counts = window_counts(
                        input[1] as usize,
                        input[2] as usize,
                        usz(*kernel),
                        usz(*stride),
                        usz(*padding),
                        *count_include_pad,
                    )
                    .map_err(|e| unsupported(e.to_string()))?;
                    NodePlan::AvgPool {
                        kernel: usz(*kernel),
                        stride: usz(*stride),
                        padding: usz(*padding),
                        counts,
                    }
                }
                Op::MaxPool {
                    kernel,
                    stride,
                    padding,
                } => NodePlan::MaxPool {
                    kernel: usz(*kernel),
                    stride: usz(*stride),
                    padding: usz(*padding),
                    levels: max_tree((kernel[0] * kernel[1]) as usize, c * h * w, mode)?,
                },
                Op::GlobalAvgPool => NodePlan::GlobalAvgPool {
                    count: u64::from(input[1] * input[2]).max(1),
                },
                Op::Add => NodePlan::Add,
                Op::Concat => NodePlan::Concat,
                Op::Broadcast { height, width } => NodePlan::Broadcast {
                    h: *height as usize,
                    w: *width as usize,
                },
            };
            nodes.push(plan);
        }
        let [oc, oh, ow] = model.output_shape().map(|v| v as usize);
        let argmax = match options.reveal {
            Reveal::Logits => Vec::new(),
            Reveal::Label => argmax_tree(oc, oh * ow)?,
        };
        Ok(Plan {
            nodes,
            argmax,
            options,
        })
    }

    /// The options this plan was made for.
    pub fn options(&self) -> Options {
        self.options
    }

    /// Total DReLUs of one inference (network and argmax).
    pub fn drelus(&self) -> u64 {
        self.specs().map(|s| s.patches() as u64).sum()
    }

    fn specs(&self) -> impl Iterator<Item = &SelectSpec> {
        self.nodes
            .iter()
            .flat_map(|n| match n {
                NodePlan::BlockRelu { spec: Some(s), .. } | NodePlan::Relu6 { spec: s } => {
                    std::slice::from_ref(s)
                }
                NodePlan::MaxPool { levels, .. } => levels.as_slice(),
                _ => &[],
            })
            .chain(self.argmax.iter())
    }

    /// Closed-form bytes per inference (offline + online, output reveal included) and once per
    /// session (setup), for the byte-count tests and the bench.
    pub fn closed_form_bytes(&self, model: &SecureModel) -> (u64, u64) {
        let mut per_inference: u64 = self.specs().map(|s| s.bytes()).sum();
        let mut setup = 0;
        for n in &self.nodes {
            if let NodePlan::Linear(l) = n {
                setup += l.setup_bytes();
                per_inference += l.offline_bytes() + l.online_bytes();
            }
        }
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        per_inference += 8 * if self.argmax.is_empty() {
            oc * oh * ow
        } else {
            oh * ow
        };
        // the nonce to server and helper (the backend's 1-byte "setup needed" flag excluded)
        per_inference += 2 * NONCE_LEN as u64;
        (per_inference, setup)
    }
}

/// Bytes of the per-inference nonce.
pub const NONCE_LEN: usize = 16;

/// One party's preprocessing of one inference.
#[derive(Debug)]
pub struct Preprocessing {
    linear: Vec<Option<LinearPre>>,
    select: Vec<Vec<SelectPre>>,
    argmax: Vec<SelectPre>,
}

/// One party's side of a session: the plan, and the server's weights or the helper's masked
/// weights.
#[derive(Debug)]
pub struct Session<'m> {
    pub role: Role,
    model: &'m SecureModel,
    plan: Plan,
    /// Server: weights (prepared for the session) and biases per node.
    weights: Vec<Option<(LayerWeights, Option<Vec<u64>>)>>,
    /// Helper: `F = W − B` per node, after setup.
    masked: Vec<Option<HelperWeights>>,
}

impl<'m> Session<'m> {
    /// A session for `role`; the server must pass its weights.
    pub fn new(
        role: Role,
        model: &'m SecureModel,
        weights: Option<&ModelWeights>,
        options: Options,
    ) -> Result<Self> {
        let plan = Plan::new(model, options)?;
        let mut w = vec![None; model.nodes.len()];
        if role == Role::Server {
            let weights = weights.ok_or_else(|| SecureNnError::Input {
                role,
                message: "the server needs the weights".into(),
            })?;
            weights
                .check_against(model)
                .map_err(|e| SecureNnError::Input {
                    role,
                    message: e.to_string(),
                })?;
            for (i, n) in plan.nodes.iter().enumerate() {
                if let NodePlan::Linear(l) = n {
                    let bad = |e: knapsec_core::CoreError| SecureNnError::Input {
                        role,
                        message: e.to_string(),
                    };
                    let t = weights.get(&l.weight).map_err(bad)?;
                    let wt = RingTensor::from_i64(&l.w_dims, &t.data)
                        .and_then(|w| LayerWeights::new(l, w))
                        .map_err(|e| SecureNnError::Ring {
                            role,
                            layer: model.nodes[i].name.clone(),
                            source: e,
                        })?;
                    let b = match &l.bias {
                        Some(b) => Some(
                            weights
                                .get(b)
                                .map_err(bad)?
                                .data
                                .iter()
                                .map(|&v| v as u64)
                                .collect(),
                        ),
                        None => None,
                    };
                    w[i] = Some((wt, b));
                }
            }
        }
        Ok(Session {
            role,
            model,
            plan,
            weights: w,
            masked: vec![None; model.nodes.len()],
        })
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The helper's masked weights per node (after setup).
    pub fn masked(&self) -> &[Option<HelperWeights>] {
        &self.masked
    }

    /// Installs masked weights kept from an earlier setup of the same session (helper).
    pub fn set_masked(&mut self, masked: Vec<Option<HelperWeights>>) {
        self.masked = masked;
    }

    /// True if the helper holds the masked weights (setup done).
    pub fn is_set_up(&self) -> bool {
        self.plan
            .nodes
            .iter()
            .zip(&self.masked)
            .all(|(n, m)| !matches!(n, NodePlan::Linear(_)) || m.is_some())
    }

    /// The per-session setup: the server sends `F = W − B` of every linear layer to the helper.
    pub fn setup(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        for (i, n) in self.plan.nodes.iter().enumerate() {
            let NodePlan::Linear(l) = n else { continue };
            ctx.scope(&self.model.nodes[i].name, "setup");
            match self.role {
                Role::Server => linear::setup_server(
                    ctx,
                    l,
                    &self.weights[i].as_ref().expect("server weights").0,
                )?,
                Role::Helper => self.masked[i] = Some(linear::setup_helper(ctx, l)?),
                Role::Client => {}
            }
        }
        Ok(())
    }

    /// The offline phase of one inference (needs the nonce set in `ctx`).
    pub fn offline(&self, ctx: &mut Ctx<'_>) -> Result<Preprocessing> {
        let n = self.plan.nodes.len();
        let mut pre = Preprocessing {
            linear: Vec::with_capacity(n),
            select: Vec::with_capacity(n),
            argmax: Vec::new(),
        };
        for (i, node) in self.plan.nodes.iter().enumerate() {
            let name = &self.model.nodes[i].name;
            let mut lin = None;
            let mut sel = Vec::new();
            match node {
                NodePlan::Linear(l) => {
                    ctx.scope(name, "linear");
                    lin = Some(linear::offline(ctx, l, self.masked[i].as_ref())?);
                }
                NodePlan::BlockRelu { spec: Some(s), .. } | NodePlan::Relu6 { spec: s } => {
                    ctx.scope(name, "drelu");
                    sel.push(select::offline(ctx, s, stream(i, 0))?);
                }
                NodePlan::MaxPool { levels, .. } => {
                    ctx.scope(name, "drelu");
                    for (k, s) in levels.iter().enumerate() {
                        sel.push(select::offline(ctx, s, stream(i, k))?);
                    }
                }
                _ => {}
            }
            pre.linear.push(lin);
            pre.select.push(sel);
        }
        ctx.scope("output", "drelu");
        for (k, s) in self.plan.argmax.iter().enumerate() {
            pre.argmax.push(select::offline(ctx, s, stream(n, k))?);
        }
        Ok(pre)
    }

    /// The online phase: the client passes its input (`C·H·W` reals); returns what this party
    /// learns.
    pub fn online(
        &self,
        ctx: &mut Ctx<'_>,
        pre: &Preprocessing,
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
                    let lp = pre.linear[i].as_ref().expect("linear preprocessing");
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
                            let y = select::online(ctx, s, &pre.select[i][0], &v)?;
                            if party {
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
                    let y = select::online(ctx, spec, &pre.select[i][0], &v)?;
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
                    levels,
                } => {
                    ctx.scope(&gnode.name, "maxpool");
                    let mut cands: Vec<Vec<u64>> = if party {
                        window_taps(get(0), *kernel, *stride, *padding, TapPadding::Edge)
                            .map_err(|e| ring(ctx, e))?
                            .into_iter()
                            .map(|t| t.into_vec())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let size: usize = shape.iter().product();
                    for (k, s) in levels.iter().enumerate() {
                        let pairs = s.pixels / size.max(1);
                        let mut d = Vec::new();
                        if party {
                            for q in 0..pairs {
                                d.extend(
                                    cands[2 * q]
                                        .iter()
                                        .zip(&cands[2 * q + 1])
                                        .map(|(a, b)| a.wrapping_sub(*b)),
                                );
                            }
                        }
                        let y = select::online(ctx, s, &pre.select[i][k], &d)?;
                        if party {
                            let mut next = Vec::with_capacity(cands.len() - pairs);
                            for q in 0..pairs {
                                let b = &cands[2 * q + 1];
                                next.push(
                                    b.iter()
                                        .zip(&y[q * size..(q + 1) * size])
                                        .map(|(b, y)| b.wrapping_add(*y))
                                        .collect(),
                                );
                            }
                            if cands.len() % 2 == 1 {
                                next.push(cands.pop().expect("odd candidate"));
                            }
                            cands = next;
                        }
                    }
                    if party {
                        RingTensor::from_vec(&shape, cands.pop().unwrap_or_default())
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
        self.reveal(ctx, pre, out)
    }

    fn reveal(
        &self,
        ctx: &mut Ctx<'_>,
        pre: &Preprocessing,
        out: RingTensor,
    ) -> Result<PartyOutput> {
        let role = self.role;
        let party = role != Role::Helper;
        ctx.scope("output", "reveal");
        let mut share = out.into_vec();
        if !self.plan.argmax.is_empty() {
            ctx.scope("output", "argmax");
            let [_, oh, ow] = self.model.output_shape().map(|v| v as usize);
            let size = oh * ow;
            // candidates: (value, index) shares per class
            let mut cands: Vec<(Vec<u64>, Vec<u64>)> = if party {
                share
                    .chunks(size)
                    .enumerate()
                    .map(|(c, v)| {
                        (
                            v.to_vec(),
                            vec![if role == Role::Client { c as u64 } else { 0 }; size],
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            };
            for (k, s) in self.plan.argmax.iter().enumerate() {
                let pairs = s.pixels / (2 * size);
                let mut v = Vec::new();
                if party {
                    v.reserve(s.pixels);
                    for q in 0..pairs {
                        v.extend(
                            cands[2 * q]
                                .0
                                .iter()
                                .zip(&cands[2 * q + 1].0)
                                .map(|(a, b)| a.wrapping_sub(*b)),
                        );
                    }
                    for q in 0..pairs {
                        v.extend(
                            cands[2 * q]
                                .1
                                .iter()
                                .zip(&cands[2 * q + 1].1)
                                .map(|(a, b)| a.wrapping_sub(*b)),
                        );
                    }
                }
                let y = select::online(ctx, s, &pre.argmax[k], &v)?;
                if party {
                    let n = pairs * size;
                    let mut next = Vec::with_capacity(cands.len() - pairs);
                    for q in 0..pairs {
                        let (bv, bi) = &cands[2 * q + 1];
                        let yv = &y[q * size..(q + 1) * size];
                        let yi = &y[n + q * size..n + (q + 1) * size];
                        next.push((
                            bv.iter().zip(yv).map(|(b, y)| b.wrapping_add(*y)).collect(),
                            bi.iter().zip(yi).map(|(b, y)| b.wrapping_add(*y)).collect(),
                        ));
                    }
                    if cands.len() % 2 == 1 {
                        next.push(cands.pop().expect("odd candidate"));
                    }
                    cands = next;
                }
            }
            share = if party {
                cands.pop().map(|c| c.1).unwrap_or_default()
            } else {
                Vec::new()
            };
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
                if self.plan.argmax.is_empty() {
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
