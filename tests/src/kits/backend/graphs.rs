//! The graphs of the secure-backend kit (see [`super`]): the small graphs of rule 6, each
//! covering one kind of op of the networks knapsec runs (a ResNet basic block, a MobileNetV2
//! inverted residual, pooling (also with asymmetric pads and in ceil mode), concatenation,
//! the argmax, a segmentation head with bilinear resizing), the all-ops graph of rule 4, and
//! the synthetic ResNet18-CIFAR-shaped networks of rule 10.

use knapsec_core::block::BlockSize;
use knapsec_core::graph::{ModelWeights, OutputKind, PoolGeometry, ResizeMode, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, NodeId, random_weights};
use knapsec_securenn::nets;

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

/// The pooling of imported networks: a convolution with asymmetric padding, max pooling in
/// ceil mode (SqueezeNet's), average pooling with asymmetric pads in ceil mode.
fn padded_pools(g: &mut GraphBuilder, x: NodeId) -> NodeId {
    let x = g.pad("conv1.pad", x, [0, 0, 1, 1]).expect("pad");
    let c = conv(g, "conv1", x, ConvSpec::square(4, 3, 2, 0), Some("bn1"));
    let c = g
        .block_relu("relu", c, vec![BlockSize::RELU; 4])
        .expect("relu");
    let ceil = |kernel, pads| PoolGeometry {
        kernel,
        stride: [2, 2],
        pads,
        ceil_mode: true,
    };
    let m = g
        .pool("maxpool", c, ceil([3, 3], [0; 4]), None)
        .expect("maxpool");
    g.pool("avgpool1", m, ceil([2, 2], [1, 0, 0, 1]), Some(false))
        .expect("avgpool")
}

/// A segmentation head of the kind torchvision and OpenMMLab export: a strided backbone,
/// a ×2 bilinear resize (half-pixel) fused with a skip connection, a classifier and a ×8
/// bilinear resize of its logits to a map larger than the input.
fn segmentation(g: &mut GraphBuilder) -> NodeId {
    let sq = ConvSpec::square;
    let x = g.input();
    let c1 = conv(g, "backbone.conv1", x, sq(6, 3, 1, 1), Some("backbone.bn1"));
    let p = |h, w| BlockSize::Patch { h, w };
    let blocks = vec![
        BlockSize::RELU,
        p(2, 2),
        BlockSize::RELU,
        p(1, 2),
        BlockSize::RELU,
        p(2, 2),
    ];
    let r1 = g.block_relu("relu1", c1, blocks).expect("relu");
    let c2 = conv(
        g,
        "backbone.conv2",
        r1,
        sq(6, 3, 2, 1),
        Some("backbone.bn2"),
    );
    let r2 = g
        .block_relu("relu2", c2, vec![BlockSize::RELU; 6])
        .expect("relu");
    let bilinear = ResizeMode::Bilinear {
        align_corners: false,
    };
    let up = g.resize("up2", r2, 6, 6, bilinear).expect("resize");
    let fused = g.add("fuse", &[up, r1]).expect("add");
    let head = ConvSpec {
        bias: true,
        ..sq(3, 1, 1, 0)
    };
    let logits = conv(g, "classifier", fused, head, None);
    g.resize("up8", logits, 48, 48, bilinear).expect("resize")
}

/// The graphs of rule 6 (see the kit's documentation).
pub fn kit_graphs() -> Vec<KitGraph> {
    let resnet: Body = |g, _| resnet_block(g);
    // every classifier ends in global average pooling and a linear head
    #[rustfmt::skip]
    let classifiers: [Classifier; 7] = [
        ("resnet block", "kit-resnet-block", [3, 8, 8], "fc", 5, 21, false, resnet),
        ("mobilenetv2 block", "kit-mobilenetv2-block", [3, 8, 8], "classifier", 5, 22, false,
            mobilenet_block),
        ("max pooling", "kit-maxpool", [3, 9, 9], "fc", 4, 23, false, max_pools),
        ("concatenation", "kit-concat", [3, 8, 8], "fc", 4, 24, false, two_branches),
        ("average pooling", "kit-avgpool", [3, 9, 9], "fc", 4, 25, false, avg_pools),
        ("padded and ceil-mode pooling", "kit-padded-pool", [3, 12, 11], "fc", 4, 28, false,
            padded_pools),
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
    // bilinear resizing ×2 and ×8 in a segmentation head: the label map only
    let mut g = GraphBuilder::new("kit-segmentation", 12, [3, 6, 6]);
    segmentation(&mut g);
    out.push(kit_graph(
        "segmentation (resize x2, x8)",
        g,
        OutputKind::Segmentation,
        29,
        true,
    ));
    out
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
