//! Block-structured networks (digest §4.1, §8; DESIGN §4 "the tch side").
//!
//! A [`BlockNet`] is a sequence of named blocks: running them in order is the full forward
//! pass, and the last block returns the network's output (logits). Every ReLU sits in its own
//! named slot ([`Slots`]), so any slot can be swapped (ReLU ↔ block ReLU ↔ identity) and the
//! network can be run from the block of any layer to the end on cached block inputs — what the
//! distortion engine needs.
//!
//! Builders register with `inventory::submit!` of a [`NetRegistration`] keyed by the same name
//! as the architecture's (tch-free) `ArchAdapter`. [`Network`] bundles a built network with
//! the `VarStore` that owns its weights.

use crate::error::{NnError, Result};
use crate::random::{self, SeededRng};
use crate::slots::{Activation, Slots};
use knapsec_core::graph_build::ParamSource;
use knapsec_core::{ArchOptions, BlockSpec, graph::SecureModel};
use std::sync::Mutex;
use tch::{Device, Tensor, nn};

/// The source of a network's secure-model graph: the architecture's (tch-free) plan, which
/// builds the graph with the block sizes of a spec.
pub trait GraphSource: Send + Sync + std::fmt::Debug {
    /// The secure-model graph with the block sizes of `spec` (the architecture's defaults for
    /// layers it lacks), and the `state_dict` sources of its weights.
    fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)>;
}

/// A plan and the function that builds its secure graph, as a [`GraphSource`]: what an
/// architecture's network keeps (see [`plan_graph`]).
pub struct PlanGraph<P> {
    plan: P,
    build: PlanGraphFn<P>,
}

/// Builds a plan's secure-model graph for a spec (e.g. `ResNetPlan::secure_graph`).
pub type PlanGraphFn<P> =
    fn(&P, Option<&BlockSpec>, u32) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)>;

impl<P: std::fmt::Debug> std::fmt::Debug for PlanGraph<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PlanGraph").field(&self.plan).finish()
    }
}

impl<P: Send + Sync + std::fmt::Debug> GraphSource for PlanGraph<P> {
    fn secure_graph(
        &self,
        spec: Option<&BlockSpec>,
        frac_bits: u32,
    ) -> knapsec_core::Result<(SecureModel, Vec<ParamSource>)> {
        (self.build)(&self.plan, spec, frac_bits)
    }
}

/// The graph source of [`BlockNetParts::new`] for a network built from `plan`, whose secure
/// graph `build` makes: `plan_graph(plan.clone(), ResNetPlan::secure_graph)`.
pub fn plan_graph<P: Send + Sync + std::fmt::Debug + 'static>(
    plan: P,
    build: PlanGraphFn<P>,
) -> Option<Box<dyn GraphSource>> {
    Some(Box::new(PlanGraph { plan, build }))
}

/// Input shape `[C, H, W]` of [`BlockNetParts::new`] from a plan's `(C, H, W)`.
pub fn input_shape((c, h, w): (u32, u32, u32)) -> [i64; 3] {
    [c.into(), h.into(), w.into()]
}

/// The two accessors of [`BlockNet`] that every network writes the same way, for a network
/// that keeps its [`BlockNetParts`] in field `$field`: `knapsec_nn::block_net_parts!(parts);`
/// inside `impl BlockNet for …`.
#[macro_export]
macro_rules! block_net_parts {
    ($field:ident) => {
        fn parts(&self) -> &$crate::net::BlockNetParts {
            &self.$field
        }

        fn parts_mut(&mut self) -> &mut $crate::net::BlockNetParts {
            &mut self.$field
        }
    };
}

/// Registers a network builder under an architecture name (a [`NetRegistration`]): either a
/// [`NetBuilder`] function, or `|options, root| expr` where `expr` is a
/// `Result<impl BlockNet>` (the network's constructor).
#[macro_export]
macro_rules! register_net {
    ($name:expr, $provider:expr, |$options:ident, $root:ident| $build:expr) => {
        $crate::inventory::submit! {
            $crate::net::NetRegistration {
                name: $name,
                provider: $provider,
                build: |$options, $root| Ok(Box::new($build?)),
            }
        }
    };
    ($name:expr, $provider:expr, $build:path) => {
        $crate::inventory::submit! {
            $crate::net::NetRegistration { name: $name, provider: $provider, build: $build }
        }
    };
}

/// What every [`BlockNet`] holds the same way, behind the trait's provided accessors: a
/// network keeps one of these and returns it from [`BlockNet::parts`] and
/// [`BlockNet::parts_mut`].
#[derive(Debug)]
pub struct BlockNetParts {
    /// Architecture name (the registry key).
    pub arch: String,
    /// The options the network was built with.
    pub options: ArchOptions,
    /// Input shape `(C, H, W)` the network was built for.
    pub input_shape: [i64; 3],
    /// Block names in execution order.
    pub blocks: Vec<String>,
    /// The activation slots.
    pub slots: Slots,
    /// Where the secure graph comes from (`None`: the network has none, and
    /// [`BlockNet::secure_graph`] says so).
    pub graph: Option<Box<dyn GraphSource>>,
    /// The network's own generator for what it draws in training (dropout masks), seeded
    /// by [`Self::seed`] (the trainer does so every epoch); never tch's global one.
    random: Mutex<SeededRng>,
}

impl BlockNetParts {
    /// The parts of a network; its generator starts from seed 0.
    pub fn new(
        arch: impl Into<String>,
        options: ArchOptions,
        input_shape: [i64; 3],
        blocks: Vec<String>,
        slots: Slots,
        graph: Option<Box<dyn GraphSource>>,
    ) -> Self {
        BlockNetParts {
            arch: arch.into(),
            options,
            input_shape,
            blocks,
            slots,
            graph,
            random: Mutex::new(random::seeded(0)),
        }
    }

    /// Re-seeds the network's generator.
    pub fn seed(&self, seed: u64) {
        *self.random.lock().unwrap_or_else(|e| e.into_inner()) = random::seeded(seed);
    }

    /// Dropout with probability `p` in training (the identity otherwise), its mask drawn from
    /// the network's generator ([`random::dropout`]).
    pub fn dropout(&self, x: &Tensor, p: f64, train: bool) -> Tensor {
        if !train {
            return x.shallow_clone();
        }
        let mut rng = self.random.lock().unwrap_or_else(|e| e.into_inner());
        random::dropout(&mut *rng, x, p, train)
    }
}

/// A network as a sequence of named blocks with named activation slots.
///
/// Implementors provide their [`BlockNetParts`] and the blocks; everything else has a default.
/// Tensors are `[N, C, H, W]`; `train` selects BatchNorm's training mode (tch's `ModuleT`
/// convention).
pub trait BlockNet: Send + std::fmt::Debug {
    /// The parts every network holds the same way.
    fn parts(&self) -> &BlockNetParts;

    /// The parts, mutably (to swap activations).
    fn parts_mut(&mut self) -> &mut BlockNetParts;

    /// Runs block `index` on `x`, the output of block `index - 1` (the image for block 0).
    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor;

    /// Architecture name (the registry key).
    fn arch(&self) -> &str {
        &self.parts().arch
    }

    /// The options the network was built with.
    fn options(&self) -> &ArchOptions {
        &self.parts().options
    }

    /// Input shape `(C, H, W)` the network was built for.
    fn input_shape(&self) -> [i64; 3] {
        self.parts().input_shape
    }

    /// Block names in execution order (e.g. `stem`, `layer1_0`, …).
    fn block_names(&self) -> &[String] {
        &self.parts().blocks
    }

    /// The activation slots.
    fn slots(&self) -> &Slots {
        &self.parts().slots
    }

    /// The activation slots, mutably (to swap activations).
    fn slots_mut(&mut self) -> &mut Slots {
        &mut self.parts_mut().slots
    }

    /// The secure-model graph of the network with its current activations baked in, and the
    /// `state_dict` sources of its weights (see [`crate::export`]).
    fn secure_graph(&self, frac_bits: u32) -> Result<(SecureModel, Vec<ParamSource>)> {
        let parts = self.parts();
        match &parts.graph {
            Some(g) => Ok(g.secure_graph(Some(&parts.slots.to_spec()), frac_bits)?),
            None => Err(NnError::Export {
                arch: parts.arch.clone(),
                message: "the network has no secure graph".into(),
            }),
        }
    }

    /// Maps a key of a foreign checkpoint to this network's `state_dict` key (e.g. torchvision
    /// names to OpenMMLab names); the default keeps the key.
    fn import_key(&self, key: &str) -> String {
        key.to_string()
    }

    /// Index of the block named `name`.
    fn block_index(&self, name: &str) -> Result<usize> {
        self.block_names()
            .iter()
            .position(|b| b == name)
            .ok_or_else(|| NnError::UnknownBlock {
                arch: self.arch().to_string(),
                block: name.to_string(),
            })
    }

    /// Index of the block in which ReLU layer `layer` lives.
    fn layer_block(&self, layer: &str) -> Result<usize> {
        Ok(self.slots().get(layer)?.block)
    }

    /// Runs blocks `start..` on `x` (the input of block `start`) and returns the output.
    /// For `start == 0` the input shape is checked against [`Self::input_shape`].
    fn forward_from(&self, start: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let count = self.block_names().len();
        if start >= count {
            return Err(NnError::BlockOutOfRange {
                arch: self.arch().to_string(),
                index: start,
                count,
            });
        }
        if start == 0 {
            check_input(self.arch(), self.input_shape(), x)?;
        }
        let mut y = self.run_block(start, x, train);
        for i in start + 1..count {
            y = self.run_block(i, &y, train);
        }
        Ok(y)
    }

    /// The full forward pass.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_from(0, x, train)
    }

    /// Output of every block for input `x` (entry `i` is the input of block `i + 1`; the last
    /// entry is the network's output), for caching in distortion extraction.
    fn block_outputs(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        check_input(self.arch(), self.input_shape(), x)?;
        let mut outs: Vec<Tensor> = Vec::with_capacity(self.block_names().len());
        for i in 0..self.block_names().len() {
            let y = self.run_block(i, outs.last().unwrap_or(x), train);
            outs.push(y);
        }
        Ok(outs)
    }

    /// Runs the rest of block `index` after slot `slot` (which lives in that block) and returns
    /// the block's output — the distortion engine's way to start a pass at a layer instead of at
    /// its block ([`crate::distortion`]).
    ///
    /// `act` is the slot's output for `V ≥ 1` variants stacked variant-major along the batch
    /// (`V·N` rows); `input` is the block's input for the `N` images (`N` rows), shared by every
    /// variant. The default runs the whole block on `input` repeated `V` times with `act`
    /// injected at the slot (correct for every network, but it redoes the work before the slot);
    /// networks override it to continue from the slot.
    fn run_block_after_slot(
        &self,
        index: usize,
        slot: crate::slots::SlotId,
        act: &Tensor,
        input: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        run_block_injected(self, index, slot, act, input, train)
    }

    /// The network's output for the rows of `change` — clean slot outputs of `slot` (in block
    /// `index`) with one channel changed per row — in evaluation mode; `input` is each row's
    /// block input (`R` rows). `cache` is kept by the caller for one clean batch and one slot:
    /// networks keep there what every row shares (e.g. the clean output of the convolution that
    /// reads the slot, so that each row only adds its one channel's contribution, see
    /// [`ChannelChange::conv2d`]). The default runs [`Self::run_block_after_slot`] on the
    /// stacked rows, then the later blocks.
    fn forward_after_channel_change(
        &self,
        index: usize,
        slot: crate::slots::SlotId,
        change: &ChannelChange<'_>,
        input: &Tensor,
        cache: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let _ = cache;
        forward_stacked(self, index, slot, change, input)
    }

    /// Puts `act` into `layer`'s slot.
    fn set_activation(&mut self, layer: &str, act: Activation) -> Result<()> {
        self.slots_mut().set(layer, act)
    }

    /// Applies a block spec (see [`Slots::apply_spec`]).
    fn apply_spec(&mut self, spec: &BlockSpec) -> Result<()> {
        self.slots_mut().apply_spec(spec)
    }

    /// Puts every slot back to its original activation.
    fn reset_activations(&mut self) {
        self.slots_mut().reset()
    }
}

/// Rows of slot outputs that differ from the clean ones in one channel each (the distortion
/// engine's (variant, image) rows): row `r` is image `images[r]` of the clean batch with
/// channel `channels[r]` replaced by `values[r]`. Rows of one channel come in runs.
pub struct ChannelChange<'a> {
    /// The clean slot output of the batch, `[N, C, H, W]`.
    pub clean: &'a Tensor,
    /// The image of each row, an `int64` tensor `[R]` on the clean output's device.
    pub images: &'a Tensor,
    /// The channel of each row.
    pub channels: &'a [i64],
    /// The new values of each row's channel, `[R, 1, H, W]`.
    pub values: &'a Tensor,
}

impl ChannelChange<'_> {
    /// `[R, 1, H, W]` index of each row's channel (for `scatter` / `gather`).
    fn channel_index(&self) -> Result<Tensor> {
        let (r, _, h, w) = self.values.size4()?;
        Ok(Tensor::from_slice(self.channels)
            .to_device(self.values.device())
            .view([-1, 1, 1, 1])
            .expand([r, 1, h, w], false))
    }

    /// The rows' slot outputs, `[R, C, H, W]`.
    pub fn stacked(&self) -> Result<Tensor> {
        let index = self.channel_index()?;
        Ok(self
            .clean
            .index_select(0, self.images)
            .scatter(1, &index, self.values))
    }

    /// `conv2d(stacked)` for a convolution without bias and groups, given `clean_out =
    /// conv2d(clean)`: the clean rows' output plus, per row, the convolution of its one changed
    /// channel with that channel's filters — `1/C` of a convolution per row. Equal to the
    /// direct product up to rounding (it rounds the change, not the sum, so it is the more
    /// accurate of the two).
    pub fn conv2d(
        &self,
        clean_out: &Tensor,
        weight: &Tensor,
        stride: [i64; 2],
        padding: [i64; 2],
    ) -> Result<Tensor> {
        let pads = [padding[0], padding[1], padding[0], padding[1]];
        self.conv2d_general(clean_out, weight, stride, pads, [1, 1], 1)
    }

    /// [`Self::conv2d`] for any geometry: `pads` per side `[top, left, bottom, right]`,
    /// `dilation` and `groups` (a depthwise convolution included). A changed input channel
    /// `c` reaches only the output channels of its group, through the filters' input
    /// channel `c mod (C / groups)`; the rest of each row is the clean output.
    pub fn conv2d_general(
        &self,
        clean_out: &Tensor,
        weight: &Tensor,
        stride: [i64; 2],
        pads: [i64; 4],
        dilation: [i64; 2],
        groups: i64,
    ) -> Result<Tensor> {
        let index = self.channel_index()?;
        let mut delta = self.values
            - self
                .clean
                .index_select(0, self.images)
                .gather(1, &index, false);
        let symmetric = pads[0] == pads[2] && pads[1] == pads[3];
        let padding = if symmetric {
            [pads[0], pads[1]]
        } else {
            // Zero padding is linear: pad the change as the clean input was padded.
            delta = delta.constant_pad_nd([pads[1], pads[3], pads[0], pads[2]]);
            [0, 0]
        };
        let groups = groups.max(1);
        let in_per_group = self.clean.size()[1] / groups;
        let out_per_group = weight.size()[0] / groups;
        let mut out = clean_out.index_select(0, self.images);
        let mut parts = Vec::new();
        let mut start = 0;
        while start < self.channels.len() {
            let c = self.channels[start];
            let len = self.channels[start..]
                .iter()
                .take_while(|&&x| x == c)
                .count();
            let (group, local) = (c / in_per_group, c % in_per_group);
            let filters = weight
                .narrow(0, group * out_per_group, out_per_group)
                .narrow(1, local, 1);
            let part = delta.narrow(0, start as i64, len as i64).conv2d(
                &filters,
                None::<&Tensor>,
                stride,
                padding,
                dilation,
                1,
            );
            if groups == 1 {
                parts.push(part);
            } else {
                // Only this group's output channels change; the view writes into `out`.
                let mut rows = out.narrow(0, start as i64, len as i64).narrow(
                    1,
                    group * out_per_group,
                    out_per_group,
                );
                rows += part;
            }
            start += len;
        }
        if groups == 1 {
            out += Tensor::cat(&parts, 0);
        }
        Ok(out)
    }
}

/// The default of [`BlockNet::forward_after_channel_change`]: the stacked rows through
/// [`BlockNet::run_block_after_slot`], then the later blocks.
pub fn forward_stacked<N: BlockNet + ?Sized>(
    net: &N,
    index: usize,
    slot: crate::slots::SlotId,
    change: &ChannelChange<'_>,
    input: &Tensor,
) -> Result<Tensor> {
    let y = net.run_block_after_slot(index, slot, &change.stacked()?, input, false)?;
    if index + 1 < net.block_names().len() {
        net.forward_from(index + 1, &y, false)
    } else {
        Ok(y)
    }
}

/// The default of [`BlockNet::run_block_after_slot`]: runs block `index` on `input` repeated
/// `V` times with `act` injected at `slot` (through the slots' tap).
pub fn run_block_injected<N: BlockNet + ?Sized>(
    net: &N,
    index: usize,
    slot: crate::slots::SlotId,
    act: &Tensor,
    input: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let v = stacked_variants(net.arch(), act, input)?;
    let repeated = repeat_rows(input, v);
    let injected = act.shallow_clone();
    let previous = net.slots().set_tap(Some(Box::new(move |id, _x| {
        (id == slot).then(|| injected.shallow_clone())
    })));
    let y = net.run_block(index, &repeated, train);
    net.slots().set_tap(previous);
    Ok(y)
}

/// Number `V` of variants stacked in `act` (`V·N` rows) over `input` (`N` rows); an error when
/// the row counts do not divide.
pub fn stacked_variants(arch: &str, act: &Tensor, input: &Tensor) -> Result<i64> {
    let (rows, n) = (
        act.size().first().copied().unwrap_or(0),
        input.size().first().copied().unwrap_or(0),
    );
    if n == 0 || rows == 0 || rows % n != 0 {
        return Err(NnError::BadOption {
            arch: arch.to_string(),
            option: "stacked variants",
            reason: format!(
                "{rows} rows of slot output do not stack over a block input of {n} rows"
            ),
        });
    }
    Ok(rows / n)
}

/// `x` (`[N, …]`) repeated `v` times along the batch, variant-major (`[v·N, …]`).
pub fn repeat_rows(x: &Tensor, v: i64) -> Tensor {
    if v == 1 {
        return x.shallow_clone();
    }
    let mut reps = vec![1i64; x.dim()];
    reps[0] = v;
    x.repeat(reps.as_slice())
}

/// Checks that `x` is `[N, C, H, W]` with the expected `(C, H, W)`.
pub fn check_input(arch: &str, expected: [i64; 3], x: &Tensor) -> Result<()> {
    let size = x.size();
    if size.len() != 4 || size[1..] != expected {
        return Err(NnError::BadInput {
            arch: arch.to_string(),
            found: size,
            expected_c: expected[0],
            expected_h: expected[1],
            expected_w: expected[2],
        });
    }
    Ok(())
}

/// Builds an architecture's network under a `VarStore` path.
pub type NetBuilder = fn(&ArchOptions, &nn::Path) -> Result<Box<dyn BlockNet>>;

/// Link-time registration of a network builder, keyed by architecture name.
pub struct NetRegistration {
    /// Architecture name, the same as its `ArchAdapter`'s.
    pub name: &'static str,
    /// The crate that registers it.
    pub provider: &'static str,
    /// The builder.
    pub build: NetBuilder,
}

inventory::collect!(NetRegistration);

/// Builds the network of an architecture named `PREFIX:REST` from `REST` (e.g. an ONNX file).
pub type NetSourceBuilder = fn(&str, &ArchOptions, &nn::Path) -> Result<Box<dyn BlockNet>>;

/// Link-time registration of a source of networks for architecture names `PREFIX:REST`, the
/// tch side of `knapsec_core::registry::ArchSourceRegistration`.
pub struct NetSourceRegistration {
    /// The prefix before the colon, e.g. `"onnx"`.
    pub prefix: &'static str,
    /// The crate that registers it.
    pub provider: &'static str,
    /// The builder, given `REST`.
    pub build: NetSourceBuilder,
}

inventory::collect!(NetSourceRegistration);

/// The registered network source for a name `PREFIX:REST`, and `REST`.
pub fn net_source(name: &str) -> Option<(NetSourceBuilder, &str)> {
    let (prefix, rest) = name.split_once(':')?;
    inventory::iter::<NetSourceRegistration>
        .into_iter()
        .find(|r| r.prefix == prefix)
        .map(|r| (r.build, rest))
}

/// Names of every network builder linked in, sorted.
pub fn net_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = inventory::iter::<NetRegistration>
        .into_iter()
        .map(|r| r.name)
        .collect();
    names.sort_unstable();
    names
}

/// The builder registered for `name`; an error lists the available ones or names a duplicate.
pub fn net_builder(name: &str) -> Result<NetBuilder> {
    let mut found = inventory::iter::<NetRegistration>
        .into_iter()
        .filter(|r| r.name == name);
    match (found.next(), found.next()) {
        (Some(r), None) => Ok(r.build),
        (Some(_), Some(_)) => Err(NnError::DuplicateNet {
            name: name.to_string(),
        }),
        (None, _) => {
            let names = net_names();
            Err(NnError::NoSuchNet {
                name: name.to_string(),
                available: if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
            })
        }
    }
}

/// A network together with the `VarStore` that owns its weights.
#[derive(Debug)]
pub struct Network {
    /// The weights (PyTorch `state_dict` names).
    pub vs: nn::VarStore,
    /// The network.
    pub net: Box<dyn BlockNet>,
}

impl Network {
    /// Builds the registered network `arch` on `device` with freshly initialised weights.
    /// A name `PREFIX:REST` with a registered [`NetSourceRegistration`] (e.g. `onnx:PATH`)
    /// is built by that source.
    pub fn build(arch: &str, options: &ArchOptions, device: Device) -> Result<Self> {
        if !net_names().contains(&arch)
            && let Some((build, rest)) = net_source(arch)
        {
            let vs = nn::VarStore::new(device);
            let net = build(rest, options, &vs.root())?;
            return Ok(Network { vs, net });
        }
        Self::build_with(net_builder(arch)?, options, device)
    }

    /// Builds a network with an explicit builder (tests, unregistered architectures).
    pub fn build_with(build: NetBuilder, options: &ArchOptions, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let net = build(options, &vs.root())?;
        Ok(Network { vs, net })
    }

    /// Loads weights from a safetensors file with `state_dict` names (see [`crate::weights`]).
    pub fn load_weights(&mut self, path: &std::path::Path) -> Result<()> {
        let net = &self.net;
        crate::weights::load(&mut self.vs, path, net.arch(), &|k| net.import_key(k))
    }

    /// Saves the weights as safetensors with `state_dict` names.
    pub fn save_weights(&self, path: &std::path::Path) -> Result<()> {
        crate::weights::save(&self.vs, path, self.net.arch())
    }

    /// Exports the network with its current activations as a secure model (see [`crate::export`]).
    pub fn export(
        &self,
        frac_bits: u32,
    ) -> Result<(SecureModel, knapsec_core::graph::ModelWeights)> {
        crate::export::export(self, frac_bits)
    }
}
