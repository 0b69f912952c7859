//! The graph executor of the `fss` backend: the public plan of a model (the same on all
//! three parties), the per-session setup, and the offline and online phases of one
//! inference (DESIGN §5).
//!
//! **Invariant.** Every value of the graph is additively shared over Z_2^64 between client
//! and server, and the client's share is input-independent and known to the helper: the
//! client and the helper compute the client's shares of the whole graph in the offline phase
//! (a "shadow" run), the server computes its shares online. This is what makes linear
//! layers free online and halves every opening:
//!
//! * **Input.** The client sends `X + A` to the server (`A` from the client–helper PRG);
//!   shares `(−A, X + A)`.
//! * **Linear layers** (convolution with folded BatchNorm, fully connected), server's
//!   weights `W`, session masks `B` / `F = W − B` as in `securenn` ([`knapsec_securenn::linear`],
//!   whose setup this backend reuses). Offline the helper, who knows the client's input
//!   share `X_c`, sends the client `conv(X_c, F) + R`; the client forms
//!   `Y_c = conv(X_c, B) + conv(X_c, F) + R = conv(X_c, W) + R`, truncates it (arithmetic
//!   shift by `f`, SecureML style, the same rule and error bound as `securenn`) and sends the
//!   server `⌊Y_c⌋ + κ`. Online the server computes `⌊conv(X_s, W) − R⌋ + bias + ⌊Y_c⌋ + κ`;
//!   the client's share is `−κ`. No online message.
//! * **ReLU family** (ReLU, block ReLU, ReLU6, max pooling, argmax): the gate of
//!   [`crate::gate`], one flight each way.
//! * **Local ops** (add, concat, broadcast, average and global average pooling by floor
//!   division of each share): the helper repeats the client's arithmetic.
//! * **Output.** The server sends its share of the logits (or of the label, after the secure
//!   argmax) to the client.
//!
//! The fixed-point semantics of every op are `securenn`'s (see `knapsec_securenn::exec`):
//! same truncation, same window of the approximate DReLU, same tie rule in max pooling and
//! argmax; the `plain` oracle is the reference.

use crate::error::{FssError, Result};
use crate::gate::{self, GatePre};
use knapsec_core::backend::PartyOutput;
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, Op, SecureModel};
use knapsec_core::transport::Role;
use knapsec_ring::{
    Conv2dParams, Prg, RingTensor, TapPadding, conv2d, conv2d_prepared, fixed, global_sum, linear,
    window_counts, window_sums, window_taps,
};
use knapsec_securenn::ctx::{Ctx, Pair, stream};
use knapsec_securenn::linear::{self as snlinear, HelperWeights, LayerWeights, LinearSpec};
use knapsec_securenn::profile::{OpKind, span};
use knapsec_securenn::select::{Groups, SelectSpec};
use knapsec_securenn::{DreluMode, Options, Reveal, SecureNnError};

type SnResult<T> = knapsec_securenn::Result<T>;

const INPUT_LABEL: &str = "fss/input";
const LIN_R_LABEL: &str = "fss/linear/r";
const LIN_KAPPA_LABEL: &str = "fss/linear/kappa";
/// The label of the client–server session mask `B` of `securenn`'s linear setup, whose
/// setup this backend reuses.
const LIN_B_LABEL: &str = "securenn/linear/b";

/// A graph shape `[C, H, W]` as tensor dimensions.
fn dims(s: [u32; 3]) -> Vec<usize> {
    s.iter().map(|&v| v as usize).collect()
}

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
        tree: Tournament,
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
    argmax: Option<Tournament>,
    options: Options,
}

/// Closed-form traffic of one inference and of a session's setup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClosedForm {
    /// Once per session: the server's masked weights to the helper.
    pub setup: u64,
    /// Offline per inference (the parties' contributions included).
    pub offline: u64,
    /// Online per inference (input and output included).
    pub online: u64,
    /// DCF key bytes one of client and server receives and holds per inference (the
    /// corrections; root seeds come from the pairwise PRGs).
    pub key_bytes: u64,
    /// Bytes of preprocessing client and server hold between the phases (keys, masks and the
    /// client's linear shares at the server), summed over both; the helper holds none.
    pub held_bytes: u64,
    /// Causal rounds of the online phase: the input, two per gate (the gates run one after
    /// the other), the reveal.
    pub online_rounds: u64,
}

fn usz(a: [u32; 2]) -> [usize; 2] {
    [a[0] as usize, a[1] as usize]
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
    /// Plans `model` under `options`; refuses what this backend cannot run (the same graphs
    /// as `securenn`).
    pub fn new(model: &SecureModel, options: Options) -> Result<Self> {
        Ok(Self::build(model, options)?)
    }

    fn build(model: &SecureModel, options: Options) -> SnResult<Self> {
        model.validate().map_err(|e| SecureNnError::Input {
            role: Role::Client,
            message: e.to_string(),
        })?;
        // One window per DReLU site: the option's, or the model's calibrated ones.
        let windows = options
            .drelu
            .choice()
            .resolve(model)
            .map_err(|e| SecureNnError::Options(e.to_string()))?;
        let mut nodes = Vec::with_capacity(model.nodes.len());
        for (i, node) in model.nodes.iter().enumerate() {
            let mode = windows[i].map_or(DreluMode::Exact, DreluMode::from);
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
                    tree: Tournament::new((kernel[0] * kernel[1]) as usize, c * h * w, 1, mode)?,
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
        // Candidates are (value, class index) per pixel; a single class has nothing to compare
        // and its logits are revealed as they are.
        let argmax = match options.reveal {
            Reveal::Label if oc > 1 => Some(Tournament::new(oc, oh * ow, 2, DreluMode::Exact)?),
            _ => None,
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

    fn specs(&self) -> impl Iterator<Item = &SelectSpec> {
        self.nodes
            .iter()
            .flat_map(|n| match n {
                NodePlan::BlockRelu { spec: Some(s), .. } | NodePlan::Relu6 { spec: s } => {
                    std::slice::from_ref(s)
                }
                NodePlan::MaxPool { tree, .. } => tree.levels(),
                _ => &[],
            })
            .chain(self.argmax.iter().flat_map(|t| t.levels()))
    }

    /// Total DReLUs (sign tests, each a DCF) of one inference, network and argmax.
    pub fn drelus(&self) -> u64 {
        self.specs().map(|s| s.patches() as u64).sum()
    }

    /// The payload bytes of the largest single message of a session (setup and one
    /// inference), for the deployment's frame cap.
    pub fn max_message(&self, model: &SecureModel) -> u64 {
        let mut m = knapsec_runtime::CONTRIBUTION_LEN as u64;
        for s in self.specs() {
            let (px, np) = (s.pixels as u64, s.patches() as u64);
            m = m
                .max(gate::key_bytes(s))
                .max(8 * px + np.div_ceil(8))
                .max(8 * np);
        }
        for n in &self.nodes {
            if let NodePlan::Linear(l) = n {
                m = m.max(l.setup_bytes()).max(l.offline_bytes());
            }
        }
        let [ic, ih, iw] = model.input_shape().map(u64::from);
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        m.max(8 * ic * ih * iw).max(8 * oc * oh * ow)
    }

    /// Closed-form bytes of a session's setup and of one inference's phases (the helper's
    /// one-byte "setup needed" flag excluded, as in `securenn`).
    pub fn closed_form(&self, model: &SecureModel) -> ClosedForm {
        let mut c = ClosedForm {
            offline: 6 * knapsec_runtime::CONTRIBUTION_LEN as u64,
            ..ClosedForm::default()
        };
        c.online_rounds = 2;
        for s in self.specs() {
            c.online_rounds += 2;
            let (off, on) = gate::bytes(s);
            c.offline += off;
            c.online += on;
            c.key_bytes += gate::key_bytes(s);
            c.held_bytes += gate::held_bytes(s);
        }
        for n in &self.nodes {
            if let NodePlan::Linear(l) = n {
                c.setup += l.setup_bytes();
                c.offline += 2 * l.offline_bytes();
                c.held_bytes += l.offline_bytes();
            }
        }
        let [ic, ih, iw] = model.input_shape().map(u64::from);
        let [oc, oh, ow] = model.output_shape().map(u64::from);
        c.online += 8 * ic * ih * iw;
        c.online += 8 * if self.argmax.is_none() {
            oc * oh * ow
        } else {
            oh * ow
        };
        c
    }
}

/// Pairwise knock-out tournament (max pooling over a window's taps, argmax over classes),
/// `securenn`'s rule: candidates `2q` and `2q + 1` meet element-wise, every lane `l` becomes
/// `b_l + DReLU(a₀ − b₀)·(a_l − b_l)`, an odd candidate out passes unchanged, ties keep the
/// earlier candidate. One gate per level.
#[derive(Clone, Debug)]
struct Tournament {
    candidates: usize,
    size: usize,
    lanes: usize,
    levels: Vec<SelectSpec>,
}

impl Tournament {
    fn new(candidates: usize, size: usize, lanes: usize, mode: DreluMode) -> SnResult<Self> {
        let mut levels = Vec::new();
        let mut left = candidates;
        while left > 1 {
            let pairs = left / 2;
            let n = pairs * size;
            let sel = (lanes > 1).then(|| Groups::Csr {
                ptr: (0..=n).map(|g| lanes * g).collect(),
                idx: (0..n)
                    .flat_map(|g| (0..lanes).map(move |l| (g + l * n) as u32))
                    .collect(),
            });
            levels.push(SelectSpec::new(
                lanes * n,
                Groups::Singles(n),
                sel,
                0,
                mode,
            )?);
            left -= pairs;
        }
        Ok(Tournament {
            candidates,
            size,
            lanes,
            levels,
        })
    }

    fn levels(&self) -> &[SelectSpec] {
        &self.levels
    }

    /// Runs the tournament on this party's shares (`candidates × lanes × size`; empty when
    /// the party computes nothing in this phase); returns the winner's lanes.
    fn run(
        &self,
        runner: &mut Runner<'_>,
        ctx: &mut Ctx<'_>,
        node: usize,
        mut cands: Vec<Vec<Vec<u64>>>,
    ) -> Result<Vec<Vec<u64>>> {
        let size = self.size;
        let mut left = self.candidates;
        let computing = runner.computing;
        for (k, s) in self.levels.iter().enumerate() {
            let pairs = left / 2;
            let n = pairs * size;
            let mut d = Vec::new();
            if computing {
                let _pool = span(OpKind::Pooling);
                d.reserve(s.pixels);
                for lane in 0..self.lanes {
                    for pair in cands[..2 * pairs].chunks_exact(2) {
                        d.extend(
                            pair[0][lane]
                                .iter()
                                .zip(&pair[1][lane])
                                .map(|(a, b)| a.wrapping_sub(*b)),
                        );
                    }
                }
            }
            let y = runner.gate(ctx, s, stream(node, k), &d)?;
            if computing {
                let _pool = span(OpKind::Pooling);
                let mut next = Vec::with_capacity(cands.len() - pairs);
                for q in 0..pairs {
                    let b = &cands[2 * q + 1];
                    next.push(
                        (0..self.lanes)
                            .map(|lane| {
                                let y = &y[lane * n + q * size..lane * n + (q + 1) * size];
                                b[lane]
                                    .iter()
                                    .zip(y)
                                    .map(|(b, y)| b.wrapping_add(*y))
                                    .collect()
                            })
                            .collect(),
                    );
                }
                if cands.len() % 2 == 1 {
                    next.push(cands.pop().expect("odd candidate"));
                }
                cands = next;
            }
            left -= pairs;
        }
        Ok(if computing {
            cands.pop().unwrap_or_default()
        } else {
            Vec::new()
        })
    }
}

/// The two phases of an inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
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

/// One party's preprocessing of one inference.
#[derive(Debug, Default)]
pub struct Preprocessing {
    gates: Vec<GatePre>,
    /// Server: the client's truncated, masked linear shares `⌊Y_c⌋ + κ` per node.
    linear: Vec<Option<Vec<u64>>>,
}

impl Preprocessing {
    /// Bytes this party holds between the phases.
    pub fn held_bytes(&self) -> u64 {
        self.gates.iter().map(GatePre::held_bytes).sum::<u64>()
            + self
                .linear
                .iter()
                .flatten()
                .map(|v| 8 * v.len() as u64)
                .sum::<u64>()
    }

    /// Bytes of DCF keys this party holds.
    pub fn key_bytes(&self) -> u64 {
        self.gates.iter().map(GatePre::key_bytes).sum()
    }
}

/// One party's side of a session: the plan, and the server's weights or the helper's masked
/// weights.
#[derive(Debug)]
pub struct Session<'m> {
    /// The party.
    pub role: Role,
    model: &'m SecureModel,
    plan: Plan,
    weights: Vec<Option<(LayerWeights, Option<Vec<u64>>)>>,
    masked: Vec<Option<HelperWeights>>,
}

fn apply(
    x: &RingTensor,
    w: &LayerWeights,
) -> std::result::Result<RingTensor, knapsec_ring::RingError> {
    match w {
        LayerWeights::Conv(p) => conv2d_prepared(x, p),
        LayerWeights::Dense(w) => linear(x, w),
    }
}

fn apply_once(
    spec: &LinearSpec,
    x: &RingTensor,
    w: &RingTensor,
) -> std::result::Result<RingTensor, knapsec_ring::RingError> {
    match &spec.conv {
        Some(p) => conv2d(x, w, p),
        None => linear(x, w),
    }
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

    /// The per-session setup: the server sends `F = W − B` of every linear layer to the
    /// helper (`securenn`'s setup).
    pub fn setup(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        for (i, n) in self.plan.nodes.iter().enumerate() {
            let NodePlan::Linear(l) = n else { continue };
            ctx.scope(&self.model.nodes[i].name, "setup");
            match self.role {
                Role::Server => snlinear::setup_server(
                    ctx,
                    l,
                    &self.weights[i].as_ref().expect("server weights").0,
                )?,
                Role::Helper => self.masked[i] = Some(snlinear::setup_helper(ctx, l)?),
                Role::Client => {}
            }
        }
        Ok(())
    }

    /// The offline phase of one inference (per-inference keys set in `ctx`); the helper
    /// passes its private generator (fresh per inference).
    pub fn offline(&self, ctx: &mut Ctx<'_>, private: Option<&mut Prg>) -> Result<Preprocessing> {
        let mut pre = Preprocessing {
            gates: Vec::new(),
            linear: vec![None; self.model.nodes.len()],
        };
        if self.role == Role::Helper && private.is_none() {
            return Err(SecureNnError::Input {
                role: Role::Helper,
                message: "the dealer needs its private generator".into(),
            }
            .into());
        }
        self.walk(ctx, Phase::Offline, &mut pre, None, private)?;
        Ok(pre)
    }

    /// The online phase: the client passes its input (`C·H·W` reals); returns what this party
    /// learns.
    pub fn online(
        &self,
        ctx: &mut Ctx<'_>,
        pre: &mut Preprocessing,
        input: Option<&[f32]>,
    ) -> Result<PartyOutput> {
        if self.role == Role::Helper {
            return Ok(PartyOutput::Nothing);
        }
        let share = self.walk(ctx, Phase::Online, pre, input, None)?;
        self.reveal(ctx, share)
    }

    fn reveal(&self, ctx: &mut Ctx<'_>, share: Vec<u64>) -> Result<PartyOutput> {
        ctx.scope("output", "reveal");
        match self.role {
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

    /// One walk over the graph in `phase`; returns this party's share of the output (the
    /// label after the argmax, or the logits), empty where it computes nothing.
    fn walk(
        &self,
        ctx: &mut Ctx<'_>,
        phase: Phase,
        pre: &mut Preprocessing,
        input: Option<&[f32]>,
        private: Option<&mut Prg>,
    ) -> Result<Vec<u64>> {
        let role = self.role;
        let model = self.model;
        let f = model.frac_bits;
        let n = model.nodes.len();
        let computing = match role {
            Role::Client => true,
            Role::Helper => phase == Phase::Offline,
            Role::Server => phase == Phase::Online,
        };
        // The client's share carries the public constants (ReLU6's 6, the argmax's indices);
        // the helper repeats the client's arithmetic.
        let client_side = role != Role::Server;
        let mut last_use = vec![0usize; n];
        for (i, node) in model.nodes.iter().enumerate() {
            for &j in &node.inputs {
                last_use[j] = i;
            }
        }
        last_use[n - 1] = n;
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
        for (i, node) in self.plan.nodes.iter().enumerate() {
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
                                }
                                .into());
                            }
                            if let Some(bad) = x.iter().position(|v| !v.is_finite()) {
                                return Err(SecureNnError::Input {
                                    role,
                                    message: format!("input value {bad} is not finite"),
                                }
                                .into());
                            }
                            let mut t =
                                RingTensor::encode_f32(&shape, x, f).map_err(|e| ring(ctx, e))?;
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
                    let out_numel: usize = l.out_dims.iter().product();
                    let neg_kappa = |ctx: &Ctx<'_>| -> Result<RingTensor> {
                        let _prg = span(OpKind::Prg);
                        Ok(ctx
                            .prg(Pair::ClientHelper, LIN_KAPPA_LABEL, st)?
                            .ring(&shape)
                            .neg())
                    };
                    match (role, phase) {
                        (Role::Helper, Phase::Offline) => {
                            let fw =
                                self.masked[i]
                                    .as_ref()
                                    .ok_or_else(|| SecureNnError::Input {
                                        role,
                                        message: format!(
                                            "layer {:?}: no setup state (masked weights)",
                                            gnode.name
                                        ),
                                    })?;
                            let x = get(0)
                                .clone()
                                .reshape(&l.in_dims)
                                .map_err(|e| ring(ctx, e))?;
                            let r = {
                                let _prg = span(OpKind::Prg);
                                ctx.prg(Pair::ServerHelper, LIN_R_LABEL, st)?
                                    .ring(&l.out_dims)
                            };
                            let lin = span(OpKind::Linear);
                            let mut m = apply(&x, fw).map_err(|e| ring(ctx, e))?;
                            m.add_assign(&r).map_err(|e| ring(ctx, e))?;
                            drop(lin);
                            ctx.send_u64(Role::Client, m.data())?;
                            neg_kappa(ctx)?
                        }
                        (Role::Client, Phase::Offline) => {
                            let x = get(0)
                                .clone()
                                .reshape(&l.in_dims)
                                .map_err(|e| ring(ctx, e))?;
                            let b = {
                                let _prg = span(OpKind::Prg);
                                ctx.session_prg(Pair::ClientServer, LIN_B_LABEL, st)?
                                    .ring(&l.w_dims)
                            };
                            let lin = span(OpKind::Linear);
                            let mut y = apply_once(l, &x, &b).map_err(|e| ring(ctx, e))?;
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
                            linear_pre[i] = Some(ctx.recv_u64(Role::Client, out_numel)?);
                            empty()
                        }
                        (Role::Server, Phase::Online) => {
                            let (w, bias) =
                                self.weights[i]
                                    .as_ref()
                                    .ok_or_else(|| SecureNnError::Input {
                                        role,
                                        message: "no weights".into(),
                                    })?;
                            let yc = linear_pre[i].take().ok_or_else(|| SecureNnError::Input {
                                role,
                                message: format!(
                                    "layer {:?}: no offline share of the client",
                                    gnode.name
                                ),
                            })?;
                            let x = get(0)
                                .clone()
                                .reshape(&l.in_dims)
                                .map_err(|e| ring(ctx, e))?;
                            let r = {
                                let _prg = span(OpKind::Prg);
                                ctx.prg(Pair::ServerHelper, LIN_R_LABEL, st)?
                                    .ring(&l.out_dims)
                            };
                            let _lin = span(OpKind::Linear);
                            let mut y = apply(&x, w).map_err(|e| ring(ctx, e))?;
                            y.sub_assign(&r).map_err(|e| ring(ctx, e))?;
                            y.shr_arith_in_place(f);
                            if let Some(b) = bias {
                                y.add_channel_bias(b).map_err(|e| ring(ctx, e))?;
                            }
                            y.data_mut()
                                .iter_mut()
                                .zip(&yc)
                                .for_each(|(y, c)| *y = y.wrapping_add(*c));
                            y.reshape(&shape).map_err(|e| ring(ctx, e))?
                        }
                        _ => empty(),
                    }
                }
                NodePlan::BlockRelu { chans, hw, spec } => {
                    ctx.scope(&gnode.name, op("relu"));
                    match spec {
                        None if computing => {
                            let mut x = get(0).clone();
                            for (c, b) in chans.iter().enumerate() {
                                if *b == BlockSize::Zero {
                                    x.data_mut()[c * hw..(c + 1) * hw].fill(0);
                                }
                            }
                            x
                        }
                        None => empty(),
                        Some(s) => {
                            let mut v = Vec::with_capacity(if computing { s.pixels } else { 0 });
                            if computing {
                                let x = get(0).data();
                                for (c, b) in chans.iter().enumerate() {
                                    if matches!(b, BlockSize::Patch { .. }) {
                                        v.extend_from_slice(&x[c * hw..(c + 1) * hw]);
                                    }
                                }
                            }
                            let y = runner.gate(ctx, s, st, &v)?;
                            if computing {
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
                                empty()
                            }
                        }
                    }
                }
                NodePlan::Relu6 { spec } => {
                    ctx.scope(&gnode.name, op("relu6"));
                    let mut v = Vec::new();
                    if computing {
                        let x = get(0).data();
                        v.extend_from_slice(x);
                        let six = if client_side { 6u64 << f } else { 0 };
                        v.extend(x.iter().map(|a| a.wrapping_sub(six)));
                    }
                    let y = runner.gate(ctx, spec, st, &v)?;
                    if computing {
                        let m = y.len() / 2;
                        let d = (0..m).map(|k| y[k].wrapping_sub(y[m + k])).collect();
                        RingTensor::from_vec(&shape, d).map_err(|e| ring(ctx, e))?
                    } else {
                        empty()
                    }
                }
                NodePlan::AvgPool {
                    kernel,
                    stride,
                    padding,
                    counts,
                } => {
                    if computing {
                        let _pool = span(OpKind::Pooling);
                        let mut s = window_sums(get(0), *kernel, *stride, *padding)
                            .map_err(|e| ring(ctx, e))?;
                        let plane = counts.len();
                        for (k, v) in s.data_mut().iter_mut().enumerate() {
                            *v = (*v as i64).div_euclid(counts[k % plane].max(1) as i64) as u64;
                        }
                        s
                    } else {
                        empty()
                    }
                }
                NodePlan::GlobalAvgPool { count } => {
                    if computing {
                        let _pool = span(OpKind::Pooling);
                        let mut s = global_sum(get(0)).map_err(|e| ring(ctx, e))?;
                        s.data_mut()
                            .iter_mut()
                            .for_each(|v| *v = (*v as i64).div_euclid(*count as i64) as u64);
                        s
                    } else {
                        empty()
                    }
                }
                NodePlan::MaxPool {
                    kernel,
                    stride,
                    padding,
                    tree,
                } => {
                    ctx.scope(&gnode.name, op("maxpool"));
                    let taps: Vec<Vec<Vec<u64>>> = if computing {
                        let _pool = span(OpKind::Pooling);
                        window_taps(get(0), *kernel, *stride, *padding, TapPadding::Edge)
                            .map_err(|e| ring(ctx, e))?
                            .into_iter()
                            .map(|t| vec![t.into_vec()])
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let max = tree.run(&mut runner, ctx, i, taps)?;
                    if computing {
                        RingTensor::from_vec(&shape, max.into_iter().next().unwrap_or_default())
                            .map_err(|e| ring(ctx, e))?
                    } else {
                        empty()
                    }
                }
                NodePlan::Add => {
                    if computing {
                        let mut s = get(0).clone();
                        for k in 1..gnode.inputs.len() {
                            s.add_assign(get(k)).map_err(|e| ring(ctx, e))?;
                        }
                        s
                    } else {
                        empty()
                    }
                }
                NodePlan::Concat => {
                    if computing {
                        let parts: Vec<&RingTensor> = (0..gnode.inputs.len()).map(get).collect();
                        RingTensor::concat_channels(&parts).map_err(|e| ring(ctx, e))?
                    } else {
                        empty()
                    }
                }
                NodePlan::Broadcast { h, w } => {
                    if computing {
                        get(0).broadcast_hw(*h, *w).map_err(|e| ring(ctx, e))?
                    } else {
                        empty()
                    }
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
        if let Some(tree) = &self.plan.argmax {
            ctx.scope(
                "output",
                if phase == Phase::Offline {
                    "offline"
                } else {
                    "argmax"
                },
            );
            let [_, oh, ow] = model.output_shape().map(|v| v as usize);
            let size = oh * ow;
            let cands: Vec<Vec<Vec<u64>>> = if computing {
                share
                    .chunks(size)
                    .enumerate()
                    .map(|(c, v)| {
                        vec![
                            v.to_vec(),
                            vec![if client_side { c as u64 } else { 0 }; size],
                        ]
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let winner = tree.run(&mut runner, ctx, n, cands)?;
            share = winner.into_iter().nth(1).unwrap_or_default();
        }
        pre.linear = linear_pre;
        Ok(share)
    }
}
