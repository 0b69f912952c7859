//! The secure-backend kit ([`knapsec_core::SecureBackend`], DESIGN §5).
//!
//! Rules checked by [`check`] (the protocol engineers extend this kit with end-to-end runs
//! against `knapsec-plain`):
//! 1. a usable name and a non-empty description;
//! 2. the default options (empty text) are accepted, and their canonical form is a fixed
//!    point (canonicalising it again gives the same text), so both parties of a handshake
//!    compare equal bytes;
//! 3. options that are not RON are refused with `BackendError::Options`.
//!
//! [`check_end_to_end`] (for backends that really run three parties) adds:
//! 4. one inference of a small graph using every kind of op (conv with folded BN, grouped
//!    conv, mixed block ReLU with identity and zero channels, max and average pooling,
//!    residual add, concat, global average pooling, linear) with its three parties as threads
//!    over the in-memory transport gives the client the logits of `knapsec-plain` within
//!    the stated tolerance, and the server and helper nothing;
//! 5. a party whose peer disappears returns an error (no hang).
//!
//! [`check_conformance`] (for every registered private backend) adds, through the runtime's
//! phased harness ([`knapsec_runtime::simulate`]):
//! 6. on each of the small graphs of [`kit_graphs`] — a ResNet basic block with mixed block
//!    ReLUs and identity channels, a MobileNetV2 inverted residual (ReLU6, depthwise), max
//!    pooling, concatenation, average and global pooling, and the secure argmax revealing
//!    only the label (classification) or the label map (segmentation) — the client learns
//!    what `knapsec-plain` computes (logits within the tolerance; labels equal wherever
//!    plain's two best logits are more than twice the tolerance apart), server and helper
//!    nothing;
//! 7. the backend states its closed-form costs ([`SecureBackend::expected_cost`]) and
//!    options revealing labels only ([`SecureBackend::label_only_options`]), and the metered
//!    traffic of each graph equals the closed forms: setup bytes, bytes per inference,
//!    offline and online bytes and online rounds where stated.
//!
//! [`check_fixed_point`] (part of [`check_conformance`]) holds the backend to the fixed-point
//! contract of `knapsec-plain` (its crate documentation), on the oracle's shared cases
//! ([`knapsec_plain::cases`]), which the backends' own tests run for their byte counts too:
//! 8. ops without truncation (block ReLU with patch, identity and zero channels, ReLU6, max
//!    pooling, add, concat, broadcast) agree bit for bit; each convolution within one
//!    truncation (`−1..0` ulp); average pooling and a linear layer within the bounds the
//!    weights give; metered traffic equals the closed forms (rule 7);
//! 9. under approximate DReLU windows (the options' `drelu` field: `Approx(bits,
//!    lsb_ignored)`, uniform or `Calibrated` per site) the logits equal the oracle's emulation
//!    ([`knapsec_plain::evaluate_with`]) bit for bit on inputs where no decision depends on
//!    the helper's masks.
//!
//! [`check_networks`] (part of [`check_conformance`]) adds whole networks:
//! 10. a ResNet18-CIFAR-shaped network with a mixed block spec reveals plain's label, a
//!     DeepLab-like one plain's label map (up to pixels within the noise), and a narrow
//!     ResNet18 under exact DReLU and a 20-bit window gives logits within 0.2 of plain's.

use super::{KitResult, check_name, ensure};
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{DreluChoice, DreluWindow};
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, NodeId, random_weights};
use knapsec_core::transport::Role;
use knapsec_runtime::SimReport;
use knapsec_securenn::nets;
use std::time::Duration;

/// One small graph of the conformance kit, with weights, an input and whether the client
/// learns only the label (map).
#[derive(Debug)]
pub struct KitGraph {
    /// What the graph covers.
    pub name: &'static str,
    /// Its public part.
    pub model: SecureModel,
    /// Random weights.
    pub weights: ModelWeights,
    /// The client's input.
    pub input: Vec<f32>,
    /// Run with the backend's label-only options.
    pub label_only: bool,
}

fn kit_graph(
    name: &'static str,
    g: GraphBuilder,
    kind: OutputKind,
    seed: u64,
    label_only: bool,
) -> KitGraph {
    let (model, _) = g.finish(kind).expect("valid kit graph");
    let weights = random_weights(&model, seed);
    let [c, h, w] = model.input_shape();
    let input = (0..c * h * w)
        .map(|i| ((i as f32) * 0.618 + seed as f32).sin() * 2.0)
        .collect();
    KitGraph {
        name,
        model,
        weights,
        input,
        label_only,
    }
}

/// A ResNet basic block (stem, two 3×3 convolutions, residual add) with mixed block ReLUs
/// and identity channels, then global pooling and a linear layer.
fn resnet_block(g: &mut GraphBuilder) -> NodeId {
    let x = g.input();
    let k3 = ConvSpec::square(8, 3, 1, 1);
    let (p, relu, id) = (
        |h, w| BlockSize::Patch { h, w },
        BlockSize::RELU,
        BlockSize::Identity,
    );
    let stem = conv(g, "conv1", x, k3, Some("bn1"));
    let blocks = vec![relu, p(2, 2), id, p(1, 3), relu, p(3, 3), id, p(4, 4)];
    let r0 = g.block_relu("relu", stem, blocks).expect("relu");
    let c1 = conv(g, "layer1.0.conv1", r0, k3, Some("layer1.0.bn1"));
    let blocks = vec![p(2, 2), relu, id, id, p(2, 4), relu, p(8, 8), relu];
    let r1 = g.block_relu("layer1_0_1", c1, blocks).expect("relu");
    let c2 = conv(g, "layer1.0.conv2", r1, k3, Some("layer1.0.bn2"));
    let sum = g.add("layer1.0.add", &[c2, r0]).expect("add");
    let blocks = vec![relu, id, p(2, 2), relu, p(3, 2), relu, id, p(1, 1)];
    g.block_relu("layer1_0_2", sum, blocks).expect("relu")
}

/// A convolution of the kit's graphs (every one is valid by construction).
fn conv(g: &mut GraphBuilder, name: &str, x: NodeId, spec: ConvSpec, bn: Option<&str>) -> NodeId {
    g.conv(name, x, spec, bn).expect("conv")
}

/// The body of a classifier of the kit, from its input to the features pooled by its head.
type Body = fn(&mut GraphBuilder, NodeId) -> NodeId;

/// A classifier of the kit: what it covers, its arch name, input shape, head name, classes,
/// weight seed, whether it reveals the label only, and its body.
type Classifier = (
    &'static str,
    &'static str,
    [u32; 3],
    &'static str,
    u32,
    u64,
    bool,
    Body,
);

/// MobileNetV2 inverted residual after a stem: expand 1×1, ReLU6, depthwise 3×3, ReLU6,
/// project 1×1, residual add.
fn mobilenet_block(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let sq = ConvSpec::square;
    let stem = conv(g, "features.0.0", x, sq(4, 3, 1, 1), Some("features.0.1"));
    let stem = g.relu6("features_0", stem).expect("relu6");
    let e = conv(
        g,
        "features.1.conv.0.0",
        stem,
        sq(12, 1, 1, 0),
        Some("features.1.conv.0.1"),
    );
    let e = g.relu6("features_1_0", e).expect("relu6");
    let dw = ConvSpec {
        groups: 12,
        ..sq(12, 3, 1, 1)
    };
    let d = conv(g, "features.1.conv.1.0", e, dw, Some("features.1.conv.1.1"));
    let d = g.relu6("features_1_1", d).expect("relu6");
    let pr = conv(
        g,
        "features.1.conv.2",
        d,
        sq(4, 1, 1, 0),
        Some("features.1.conv.3"),
    );
    g.add("features.1.add", &[pr, stem]).expect("add")
}

/// Max pooling: overlapping windows with padding, then disjoint.
fn max_pools(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let c = conv(g, "conv1", x, ConvSpec::square(4, 3, 1, 1), Some("bn1"));
    let m = g
        .max_pool("maxpool", c, [3, 3], [2, 2], [1, 1])
        .expect("maxpool");
    g.max_pool("maxpool2", m, [2, 2], [2, 2], [0, 0])
        .expect("maxpool")
}

/// Concatenation of two branches with block ReLUs and the input.
fn two_branches(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let a = conv(g, "branch_a", x, ConvSpec::square(3, 3, 1, 1), Some("bn_a"));
    let a = g
        .block_relu("relu_a", a, vec![BlockSize::RELU; 3])
        .expect("relu");
    let b = conv(g, "branch_b", x, ConvSpec::square(2, 1, 1, 0), Some("bn_b"));
    let blocks = vec![BlockSize::Patch { h: 2, w: 2 }, BlockSize::Identity];
    let b = g.block_relu("relu_b", b, blocks).expect("relu");
    let cat = g.concat("concat", &[a, b, x]).expect("concat");
    conv(g, "fuse", cat, ConvSpec::square(4, 1, 1, 0), None)
}

/// Average pooling with and without padding counted.
fn avg_pools(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let c = conv(g, "conv1", x, ConvSpec::square(4, 3, 1, 1), Some("bn1"));
    let c = g
        .block_relu("relu", c, vec![BlockSize::RELU; 4])
        .expect("relu");
    let q = g
        .avg_pool("avgpool1", c, [2, 2], [2, 2], [0, 0], true)
        .expect("avgpool");
    g.avg_pool("avgpool2", q, [3, 3], [1, 1], [1, 1], false)
        .expect("avgpool")
}

/// The graphs of rule 6 (see the module documentation).
pub fn kit_graphs() -> Vec<KitGraph> {
    let resnet: Body = |g, _| resnet_block(g);
    // every classifier ends in global average pooling and a linear head
    #[rustfmt::skip]
    let classifiers: [Classifier; 6] = [
        ("resnet block", "kit-resnet-block", [3, 8, 8], "fc", 5, 21, false, resnet),
        ("mobilenetv2 block", "kit-mobilenetv2-block", [3, 8, 8], "classifier", 5, 22, false,
            mobilenet_block),
        ("max pooling", "kit-maxpool", [3, 9, 9], "fc", 4, 23, false, max_pools),
        ("concatenation", "kit-concat", [3, 8, 8], "fc", 4, 24, false, two_branches),
        ("average pooling", "kit-avgpool", [3, 9, 9], "fc", 4, 25, false, avg_pools),
        // the secure argmax: the label only
        ("argmax (label)", "kit-argmax", [3, 8, 8], "fc", 7, 26, true, resnet),
    ];
    let mut out: Vec<KitGraph> = classifiers
        .into_iter()
        .map(
            |(name, arch, input, head, classes, seed, label_only, body)| {
                let mut g = GraphBuilder::new(arch, 12, input);
                let x = g.input();
                let y = body(&mut g, x);
                let gap = g.global_avg_pool("avgpool", y).expect("gap");
                g.linear(head, gap, classes, true).expect("fc");
                kit_graph(name, g, OutputKind::Classification, seed, label_only)
            },
        )
        .collect();
    // the secure argmax per pixel: the label map only
    let sq = ConvSpec::square;
    let mut g = GraphBuilder::new("kit-argmax-map", 12, [3, 6, 6]);
    let x = g.input();
    let c = conv(&mut g, "backbone", x, sq(6, 3, 1, 1), Some("bn"));
    let p = |h, w| BlockSize::Patch { h, w };
    let blocks = vec![
        BlockSize::RELU,
        p(2, 3),
        BlockSize::Identity,
        BlockSize::RELU,
        p(3, 3),
        BlockSize::RELU,
    ];
    let c = g.block_relu("relu", c, blocks).expect("relu");
    let head = ConvSpec {
        bias: true,
        ..ConvSpec::square(3, 1, 1, 0)
    };
    conv(&mut g, "classifier", c, head, None);
    out.push(kit_graph(
        "argmax (label map)",
        g,
        OutputKind::Segmentation,
        27,
        true,
    ));
    out
}

/// The worst absolute difference between `got` and `want`, checked against `tolerance`.
fn compare_logits(what: &str, got: &[f32], want: &[f32], tolerance: f32) -> KitResult {
    ensure(got.len() == want.len(), || {
        format!("{what}: {} logits, expected {}", got.len(), want.len())
    })?;
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    ensure(worst <= tolerance, || {
        format!(
            "{what}: logits differ from knapsec-plain by {worst} (> {tolerance}): {got:?} vs {want:?}"
        )
    })
}

/// One inference of `backend` through the runtime's phased harness; rule 7: the metered
/// traffic equals the closed forms the backend states.
fn run_metered(
    backend: &dyn SecureBackend,
    what: &str,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
) -> Result<SimReport, String> {
    let r = knapsec_runtime::simulate(
        backend,
        model,
        weights,
        input,
        options,
        Some(Duration::from_secs(60)),
    )
    .map_err(|e| format!("{what}: {e}"))?;
    let cost = backend
        .expected_cost(model, options)
        .map_err(|e| format!("{what}: expected_cost failed: {e}"))?
        .ok_or_else(|| format!("{what}: states no closed-form costs"))?;
    let check = |field: &str, stated: u64, metered: u64| {
        ensure(stated == metered, || {
            format!("{what}: closed-form {field} {stated}, metered {metered}")
        })
    };
    check("setup bytes", cost.setup_bytes, r.setup.comm.bytes)?;
    check(
        "bytes per inference",
        cost.inference_bytes,
        r.offline.comm.bytes + r.online.comm.bytes,
    )?;
    let optional = [
        ("offline bytes", cost.offline_bytes, r.offline.comm.bytes),
        ("online bytes", cost.online_bytes, r.online.comm.bytes),
        ("online rounds", cost.online_rounds, r.online.comm.rounds),
    ];
    for (field, stated, metered) in optional {
        if let Some(stated) = stated {
            check(field, stated, metered)?;
        }
    }
    Ok(r)
}

/// Rules 6 to 10 for `backend` on every graph of [`kit_graphs`] (logits within `tolerance`,
/// absolute, in real units, per logit) and every case of [`knapsec_plain::cases`].
pub fn check_conformance(backend: &dyn SecureBackend, tolerance: f32) -> KitResult {
    let name = backend.name();
    let label_options = backend
        .label_only_options("")
        .map_err(|e| format!("backend {name:?}: label-only options refused: {e}"))?
        .ok_or_else(|| format!("backend {name:?}: states no options that reveal labels only"))?;
    for graph in kit_graphs() {
        let what = format!("backend {name:?}, graph {:?}", graph.name);
        let plain = knapsec_plain::evaluate(&graph.model, &graph.weights, &graph.input)
            .map_err(|e| format!("{what}: knapsec-plain refused it: {e}"))?;
        let options = if graph.label_only {
            label_options.as_str()
        } else {
            ""
        };
        let r = run_metered(
            backend,
            &what,
            &graph.model,
            &graph.weights,
            &graph.input,
            options,
        )?;
        let want = plain.logits();
        match (&r.output, graph.label_only) {
            (PartyOutput::Logits(got), false) => compare_logits(&what, got, &want, tolerance)?,
            (PartyOutput::Labels(got), true) => {
                let labels = plain.labels();
                ensure(got.len() == labels.len(), || {
                    format!("{what}: {} labels, expected {}", got.len(), labels.len())
                })?;
                let classes = graph.model.output_shape()[0] as usize;
                let pixels = labels.len();
                for (p, (&g, &l)) in got.iter().zip(&labels).enumerate() {
                    let logit = |c: usize| want[c * pixels + p];
                    let mut sorted: Vec<f32> = (0..classes).map(logit).collect();
                    sorted.sort_by(|a, b| b.total_cmp(a));
                    let clear = sorted.len() < 2 || sorted[0] - sorted[1] > 2.0 * tolerance;
                    ensure(g == l || !clear, || {
                        format!("{what}: pixel {p}: label {g}, knapsec-plain's is {l}")
                    })?;
                    ensure(
                        (g as usize) < classes && logit(g as usize) >= sorted[0] - 2.0 * tolerance,
                        || {
                            format!(
                                "{what}: pixel {p}: label {g} is not a best class of knapsec-plain's logits"
                            )
                        },
                    )?;
                }
            }
            (other, label_only) => {
                return Err(format!(
                    "{what}: the client got {other:?}, expected {}",
                    if label_only { "labels" } else { "logits" }
                ));
            }
        }
    }
    check_fixed_point(backend)?;
    check_networks(backend)
}

/// The options of a backend that computes every DReLU under `choice` and reveals the logits
/// (the `drelu` field of DESIGN §4's backend options).
fn window_options(choice: DreluChoice) -> String {
    let drelu = match choice {
        DreluChoice::Exact => "Exact".to_string(),
        DreluChoice::Uniform(w) => {
            format!("Approx(bits: {}, lsb_ignored: {})", w.bits, w.lsb_ignored)
        }
        DreluChoice::Calibrated => "Calibrated".to_string(),
    };
    format!("(drelu: {drelu}, reveal: Logits)")
}

/// Rules 8 and 9: the fixed-point contract of `knapsec-plain` on its cases, and bit-for-bit
/// agreement with its emulation of approximate DReLU windows.
pub fn check_fixed_point(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    for case in knapsec_plain::cases::all() {
        let what = format!("backend {name:?}, case {:?}", case.name);
        let r = run_metered(backend, &what, &case.model, &case.weights, &case.input, "")?;
        case.check(&r.output)
            .map_err(|e| format!("backend {name:?}: {e}"))?;
    }
    let windows = [
        knapsec_plain::cases::approx_block_relu(),
        knapsec_plain::cases::approx_relu6_pool(),
    ];
    for case in windows {
        let what = format!("backend {name:?}, windows on {:?}", case.model.arch);
        let mut failure = None;
        let mut secure = |choice| {
            let run = backend
                .canonical_options(&window_options(choice))
                .map_err(|e| format!("{what}: options {choice} refused: {e}"))
                .and_then(|options| {
                    run_metered(
                        backend,
                        &what,
                        &case.model,
                        &case.weights,
                        &case.input,
                        &options,
                    )
                });
            match run {
                Ok(SimReport {
                    output: PartyOutput::Logits(v),
                    ..
                }) => v,
                Ok(r) => {
                    failure.get_or_insert(format!("{what}: expected logits, got {:?}", r.output));
                    Vec::new()
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    Vec::new()
                }
            }
        };
        let agreed = case.check(&mut secure);
        if let Some(e) = failure {
            return Err(e);
        }
        agreed.map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// A ResNet18-CIFAR-shaped graph of `width` with a random block spec keeping `ratio` of the
/// DReLUs (`seed`), and random weights (`weight_seed`).
pub fn resnet18_shaped(
    width: u32,
    ratio: f64,
    seed: u64,
    weight_seed: u64,
) -> (SecureModel, ModelWeights) {
    let shapes: Vec<_> = nets::resnet18_cifar_layers(width)
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    let spec = nets::random_spec(&shapes, ratio, seed);
    let model = nets::resnet18_cifar(width, 10, Some(&spec)).expect("a valid network");
    let weights = random_weights(&model, weight_seed);
    (model, weights)
}

/// Rule 10 for `backend`: whole networks against `knapsec-plain` — a ResNet18-CIFAR-shaped one
/// with a mixed block spec reveals plain's label; a DeepLab-like one reveals plain's label map
/// (pixels whose two best logits are within 64 ulps may differ, at most one); a narrow
/// ResNet18 under exact DReLU and a 20-bit window (`label_only` options aside, the window
/// options of rule 9) gives logits within 0.2 of plain's (the truncation noise of 20 layers;
/// inside its window the approximation adds nothing).
pub fn check_networks(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    let label_options = backend
        .label_only_options("")
        .map_err(|e| format!("backend {name:?}: label-only options refused: {e}"))?
        .unwrap_or_default();
    let run = |what: &str, model, weights, x: &[f32], options: &str| {
        run_metered(backend, what, model, weights, x, options).map(|r| r.output)
    };
    let (model, weights) = resnet18_shaped(8, 0.06, 2, 11);
    for seed in 0..2 {
        let what = format!("backend {name:?}, resnet18-shaped, input {seed}");
        let x = knapsec_plain::cases::input(&model, seed);
        let plain = knapsec_plain::evaluate(&model, &weights, &x).map_err(|e| e.to_string())?;
        let got = run(&what, &model, &weights, &x, &label_options)?;
        ensure(got == PartyOutput::Labels(plain.labels()), || {
            format!(
                "{what}: {got:?}, knapsec-plain's label {:?}",
                plain.labels()
            )
        })?;
    }
    let blocks = (0..8)
        .map(|c| {
            if c % 3 == 0 {
                BlockSize::Patch { h: 2, w: 2 }
            } else {
                BlockSize::RELU
            }
        })
        .collect();
    let model = nets::deeplab_like(16, 8, 5, blocks).map_err(|e| e.to_string())?;
    let weights = random_weights(&model, 5);
    let x = knapsec_plain::cases::input(&model, 4);
    let what = format!("backend {name:?}, deeplab-like");
    match run(&what, &model, &weights, &x, &label_options)? {
        PartyOutput::Labels(got) => {
            knapsec_plain::cases::check_label_map(&model, &weights, &x, &got, 64, 1)
                .map_err(|e| format!("{what}: {e}"))?
        }
        other => return Err(format!("{what}: expected a label map, got {other:?}")),
    }
    // small activations (inputs in ±2, weights ~1/sqrt(fan_in)) stay inside a 20-bit window
    let (model, weights) = resnet18_shaped(4, 0.2, 3, 12);
    let x = knapsec_plain::cases::input(&model, 9);
    let plain = knapsec_plain::evaluate(&model, &weights, &x)
        .map_err(|e| e.to_string())?
        .logits();
    let window = DreluWindow {
        bits: 20,
        lsb_ignored: 0,
    };
    for choice in [DreluChoice::Exact, DreluChoice::Uniform(window)] {
        let what = format!("backend {name:?}, narrow resnet18 under {choice}");
        let options = backend
            .canonical_options(&window_options(choice))
            .map_err(|e| format!("{what}: options refused: {e}"))?;
        match run(&what, &model, &weights, &x, &options)? {
            PartyOutput::Logits(got) => compare_logits(&what, &got, &plain, 0.2)?,
            other => return Err(format!("{what}: expected logits, got {other:?}")),
        }
    }
    Ok(())
}

/// Runs every rule of this kit.
pub fn check(backend: &dyn SecureBackend) -> KitResult {
    let name = backend.name();
    check_name("secure-backend", name)?;
    ensure(!backend.description().trim().is_empty(), || {
        format!("backend {name:?}: empty description")
    })?;
    let canonical = backend
        .canonical_options("")
        .map_err(|e| format!("backend {name:?}: the default options are refused: {e}"))?;
    let again = backend.canonical_options(&canonical).map_err(|e| {
        format!("backend {name:?}: its own canonical options {canonical:?} are refused: {e}")
    })?;
    ensure(again == canonical, || {
        format!(
            "backend {name:?}: canonical options are not a fixed point: {canonical:?} became {again:?}"
        )
    })?;
    match backend.canonical_options("((( not ron") {
        Err(BackendError::Options(_)) => Ok(()),
        Err(e) => Err(format!(
            "backend {name:?}: malformed options refused with the wrong error: {e}"
        )),
        Ok(c) => Err(format!(
            "backend {name:?}: malformed options accepted as {c:?}"
        )),
    }
}

/// The small all-ops graph of rule 4, its random weights and an input.
pub fn all_ops_model() -> (SecureModel, ModelWeights, Vec<f32>) {
    let sq = ConvSpec::square;
    let mut g = GraphBuilder::new("kit-all-ops", 12, [3, 10, 10]);
    let x = g.input();
    let c = conv(&mut g, "conv1", x, sq(6, 3, 1, 1), Some("bn1"));
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 2 },
        BlockSize::Patch { h: 3, w: 4 },
        BlockSize::Identity,
        BlockSize::Zero,
        BlockSize::RELU,
    ];
    let r = g.block_relu("relu1", c, blocks).expect("relu");
    let m = g
        .max_pool("maxpool", r, [3, 3], [2, 2], [1, 1])
        .expect("maxpool");
    let grouped = ConvSpec {
        groups: 3,
        ..ConvSpec::square(6, 3, 1, 1)
    };
    let d = g.conv("conv2", m, grouped, Some("bn2")).expect("conv");
    let a = g.add("add", &[d, m]).expect("add");
    let p = g
        .avg_pool("avgpool", a, [2, 2], [1, 1], [0, 0], true)
        .expect("avgpool");
    let q = g
        .avg_pool("avgpool2", m, [2, 2], [1, 1], [0, 0], false)
        .expect("avgpool");
    let cat = g.concat("concat", &[p, q]).expect("concat");
    let gap = g.global_avg_pool("gap", cat).expect("gap");
    g.linear("fc", gap, 5, true).expect("fc");
    let (model, _) = g.finish(OutputKind::Classification).expect("valid graph");
    let weights = random_weights(&model, 7);
    let [c, h, w] = model.input_shape();
    let input = (0..c * h * w)
        .map(|i| ((i as f32) * 0.618).sin() * 2.0)
        .collect();
    (model, weights, input)
}

/// Runs one inference of `backend` with its three parties as threads over the in-memory
/// transport (fixed test keys, receive timeout `timeout`). Returns each party's result.
pub fn run_three(
    backend: &dyn SecureBackend,
    model: &SecureModel,
    weights: &ModelWeights,
    input: &[f32],
    options: &str,
    drop_helper: bool,
    timeout: Duration,
) -> Vec<Result<PartyOutput, BackendError>> {
    let keys = SessionKeys {
        client_server: Some([11; 32]),
        client_helper: Some([12; 32]),
        server_helper: Some([13; 32]),
        private: [14; 32],
        ..SessionKeys::default()
    };
    let ends = knapsec_net::memory_network();
    std::thread::scope(|s| {
        let handles: Vec<_> = ends
            .into_iter()
            .zip(Role::ALL)
            .filter_map(|(mut t, role)| {
                if drop_helper && role == Role::Helper {
                    return None;
                }
                let keys = &keys;
                Some(s.spawn(move || {
                    t.set_timeout(Some(timeout));
                    backend.run(PartyJob {
                        role,
                        model,
                        weights: (role == Role::Server).then_some(weights),
                        input: (role == Role::Client).then_some(input),
                        options,
                        keys,
                        inference: 0,
                        transport: &mut t,
                    })
                }))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BackendError::Party {
                        role: Role::Client,
                        message: "party thread panicked".into(),
                    })
                })
            })
            .collect()
    })
}

/// Rules 4 and 5: agreement with `knapsec-plain` within `tolerance` (absolute, in real
/// units, per logit) and an error when the helper is missing.
pub fn check_end_to_end(backend: &dyn SecureBackend, tolerance: f32) -> KitResult {
    let name = backend.name();
    let (model, weights, input) = all_ops_model();
    let plain = knapsec_plain::evaluate(&model, &weights, &input)
        .map_err(|e| format!("knapsec-plain refused the kit's model: {e}"))?;
    let want = plain.logits();
    let results = run_three(
        backend,
        &model,
        &weights,
        &input,
        "",
        false,
        Duration::from_secs(60),
    );
    let mut results = results.into_iter();
    let client = results.next().expect("three results");
    match client {
        Ok(PartyOutput::Logits(got)) => {
            compare_logits(&format!("backend {name:?}"), &got, &want, tolerance)?;
        }
        Ok(other) => {
            return Err(format!(
                "backend {name:?}: the client got {other:?}, expected logits"
            ));
        }
        Err(e) => return Err(format!("backend {name:?}: the client failed: {e}")),
    }
    for (r, role) in results.zip([Role::Server, Role::Helper]) {
        match r {
            Ok(PartyOutput::Nothing) => {}
            Ok(other) => return Err(format!("backend {name:?}: the {role} learned {other:?}")),
            Err(e) => return Err(format!("backend {name:?}: the {role} failed: {e}")),
        }
    }
    let results = run_three(
        backend,
        &model,
        &weights,
        &input,
        "",
        true,
        Duration::from_secs(20),
    );
    for r in results {
        ensure(r.is_err(), || {
            format!("backend {name:?}: a party succeeded although the helper never came")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_core::backend::{PartyJob, PartyOutput};

    /// Options are a RON unit `()` or a number of bits; `sloppy` accepts anything.
    struct Toy {
        sloppy: bool,
    }

    impl SecureBackend for Toy {
        fn name(&self) -> &str {
            "toy"
        }
        fn description(&self) -> &str {
            "a toy"
        }
        fn canonical_options(&self, options: &str) -> Result<String, BackendError> {
            if options.trim().is_empty() {
                return Ok("16".into());
            }
            match options.trim().parse::<u32>() {
                Ok(bits) => Ok(bits.to_string()),
                Err(_) if self.sloppy => Ok(options.into()),
                Err(e) => Err(BackendError::Options(e.to_string())),
            }
        }
        fn run(&self, _: PartyJob<'_>) -> Result<PartyOutput, BackendError> {
            Err(BackendError::Unsupported("toy".into()))
        }
    }

    #[test]
    fn kit_accepts_a_correct_backend_and_refuses_a_sloppy_one() {
        check(&Toy { sloppy: false }).unwrap();
        let e = check(&Toy { sloppy: true }).unwrap_err();
        assert!(e.contains("malformed options accepted"), "{e}");
    }
}
