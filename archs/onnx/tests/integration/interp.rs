//! The interpreter on imported ONNX networks (cargo feature `torch`): logits against the
//! built-in `resnet18-cifar` on the same weights and against onnxruntime's (`*.ref.json`,
//! written by `fixtures/make_fixtures.py`), the distortion fast path against the plain
//! stacked pass, and the conformance of the three views (layer table, slots, secure graph)
//! with export → load → fixed-point evaluation.

use crate::support::{arch, fixture, max_abs, test_input};
use knapsec_arch_mobilenet as _;
use knapsec_arch_onnx as _;
use knapsec_arch_resnet as _;
use knapsec_core::ArchOptions;
use knapsec_core::graph::{ModelWeights, Op, SecureModel};
use knapsec_nn::net::{ChannelChange, forward_stacked};
use knapsec_nn::tch::{Device, Tensor};
use knapsec_nn::{Network, eval_graph};
use std::sync::{Arc, Mutex};

fn reference(name: &str) -> (Vec<i64>, Vec<f64>) {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape = v["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let out = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (shape, out)
}

fn check_against_onnxruntime(fixture_name: &str) -> Network {
    let network =
        Network::build(&arch(fixture_name), &ArchOptions::default(), Device::Cpu).unwrap();
    let (shape, want) = reference(&fixture_name.replace(".onnx", ".ref.json"));
    let x = test_input([shape[0], shape[1], shape[2], shape[3]]);
    let got = network.net.forward_t(&x, false).unwrap();
    let want = Tensor::from_slice(&want).reshape(got.size());
    let diff = max_abs(&got, &want);
    assert!(
        diff < 1e-4,
        "{fixture_name}: differs from onnxruntime by {diff}"
    );
    network
}

#[test]
fn resnet18_cifar_logits_equal_the_builtin_on_the_same_weights() {
    let imported = check_against_onnxruntime("resnet18_cifar_w16.onnx");
    let options = ArchOptions::fashion_mnist();
    let mut builtin = Network::build("resnet18-cifar", &options, Device::Cpu).unwrap();
    // The ONNX initializers carry the built-in's state_dict names.
    let info = knapsec_arch_onnx::load(&fixture("resnet18_cifar_w16.onnx")).unwrap();
    let vars = imported.vs.variables();
    let named: Vec<(String, Tensor)> = info
        .keys
        .iter()
        .map(|(init, key)| (init.clone(), vars[key].shallow_clone()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&named, &path).unwrap();
    builtin.load_weights(&path).unwrap();
    assert_eq!(
        builtin.net.slots().layer_table().unwrap().layers,
        imported.net.slots().layer_table().unwrap().layers
    );
    let x = test_input([3, 1, 28, 28]);
    let a = imported.net.forward_t(&x, false).unwrap();
    let b = builtin.net.forward_t(&x, false).unwrap();
    assert_eq!(a.size(), vec![3, 10]);
    let diff = max_abs(&a, &b);
    assert!(
        diff <= 1e-5,
        "imported and built-in logits differ by {diff}"
    );
    // Loading the same file into the imported network (initializer names) changes nothing.
    let mut again = Network::build(
        &arch("resnet18_cifar_w16.onnx"),
        &ArchOptions::default(),
        Device::Cpu,
    )
    .unwrap();
    again.load_weights(&path).unwrap();
    assert_eq!(max_abs(&again.net.forward_t(&x, false).unwrap(), &a), 0.0);
}

#[test]
fn small_networks_equal_onnxruntime() {
    check_against_onnxruntime("small_concat_ceil.onnx");
    check_against_onnxruntime("ops_zoo.onnx");
}

/// For every slot: the fast path (clean convolution output cached, one channel's update)
/// against the stacked pass on three changed rows. Returns (slots checked, slots whose pass
/// used the cache, i.e. started at a convolution reading the slot).
fn fast_path_agrees(fixture_name: &str) -> (usize, usize) {
    fast_path_agrees_on(&arch(fixture_name), &ArchOptions::default())
}

/// [`fast_path_agrees`] for any registered architecture at `options`.
fn fast_path_agrees_on(fixture_name: &str, options: &ArchOptions) -> (usize, usize) {
    let network = Network::build(fixture_name, options, Device::Cpu).unwrap();
    let net = network.net.as_ref();
    let [c, h, w] = net.input_shape();
    let x = test_input([2, c, h, w]);
    let outs = net.block_outputs(&x, false).unwrap();
    let pre: Arc<Mutex<Vec<Option<Tensor>>>> =
        Arc::new(Mutex::new((0..net.slots().len()).map(|_| None).collect()));
    let rec = pre.clone();
    net.slots().set_tap(Some(Box::new(move |id, t| {
        rec.lock().unwrap()[id.0] = Some(t.shallow_clone());
        None
    })));
    let _ = net.forward_t(&x, false).unwrap();
    net.slots().set_tap(None);
    let (mut checked, mut fast_convs) = (0, 0);
    for (s, name) in net.slots().names().iter().enumerate() {
        let slot = net.slots().id(name).unwrap();
        let block = net.layer_block(name).unwrap();
        let input = if block == 0 {
            x.shallow_clone()
        } else {
            outs[block - 1].shallow_clone()
        };
        let pre_act = pre.lock().unwrap()[s].as_ref().unwrap().shallow_clone();
        let clean = net.slots().iter().nth(s).unwrap().act.forward(&pre_act);
        let channels = [0i64, 0, 1];
        let images = Tensor::from_slice(&[0i64, 1, 1]);
        // Channel 0 of images 0 and 1 as identity, channel 1 of image 1 zeroed.
        let values = Tensor::cat(
            &[
                pre_act.narrow(1, 0, 1),
                pre_act.narrow(1, 1, 1).narrow(0, 1, 1).zeros_like(),
            ],
            0,
        );
        let change = ChannelChange {
            clean: &clean,
            images: &images,
            channels: &channels,
            values: &values,
        };
        let rows = input.index_select(0, &images);
        let mut cache = Vec::new();
        let fast = net
            .forward_after_channel_change(block, slot, &change, &rows, &mut cache)
            .unwrap();
        let slow = forward_stacked(net, block, slot, &change, &rows).unwrap();
        let diff = max_abs(&fast, &slow);
        assert!(
            diff < 1e-4,
            "{fixture_name}: slot {name}: fast path differs by {diff}"
        );
        checked += 1;
        fast_convs += usize::from(!cache.is_empty());
    }
    (checked, fast_convs)
}

#[test]
fn distortion_fast_path_equals_the_stacked_pass() {
    // Every slot but the last (read by the global pooling) feeds a convolution.
    assert_eq!(fast_path_agrees("resnet18_cifar_w16.onnx"), (17, 16));
    // The first slot feeds a max pooling, the expands a Concat, the last a global pooling.
    assert_eq!(fast_path_agrees("small_concat_ceil.onnx"), (5, 1));
    // A depthwise convolution (the fast form, by its group), pooling, resize, global pooling.
    assert_eq!(fast_path_agrees("ops_zoo.onnx"), (4, 1));
}

#[test]
fn distortion_fast_path_equals_the_stacked_pass_on_mobilenet_v2() {
    let small = |h: u32, classes: u32| ArchOptions {
        input_height: Some(h),
        input_width: Some(h),
        classes: Some(classes),
        ..ArchOptions::default()
    };
    // MobileNetV2: every slot but the last feeds a convolution (expansions feed depthwise ones).
    assert_eq!(
        fast_path_agrees_on("mobilenetv2-imagenet", &small(32, 10)),
        (35, 34)
    );
}

#[test]
fn conformance_table_slots_graph_export_and_fixed_point() {
    let network = Network::build(
        &arch("resnet18_cifar_w16.onnx"),
        &ArchOptions::default(),
        Device::Cpu,
    )
    .unwrap();
    let registry = knapsec_core::Registry::builtin().unwrap();
    let adapter = registry.arch(&arch("resnet18_cifar_w16.onnx")).unwrap();
    let table = adapter.layer_table(&ArchOptions::default()).unwrap();
    assert_eq!(
        table.layers,
        network.net.slots().layer_table().unwrap().layers
    );
    let (model, weights) = network.export(16).unwrap();
    let relus: Vec<(String, [u32; 3])> = model
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::BlockRelu { layer, .. } | Op::Relu6 { layer } => Some((layer.clone(), n.shape)),
            _ => None,
        })
        .collect();
    let want: Vec<(String, [u32; 3])> = table
        .layers
        .iter()
        .map(|l| (l.name.clone(), [l.channels, l.height, l.width]))
        .collect();
    assert_eq!(relus, want);
    // export → load round trip, then the float evaluator and the plain fixed-point backend.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    weights.save(dir.path()).unwrap();
    let (model, weights) = (
        SecureModel::load(dir.path()).unwrap(),
        ModelWeights::load(dir.path()).unwrap(),
    );
    let x = test_input([1, 1, 28, 28]);
    let want = network.net.forward_t(&x, false).unwrap();
    let scale = f64::try_from(want.abs().max()).unwrap().max(1.0);
    let f = eval_graph(&model, &weights, &x).unwrap().flatten(1, -1);
    let diff = max_abs(&f, &want);
    assert!(
        diff < 1e-3 * scale,
        "float evaluation of the export differs by {diff}"
    );
    let input: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
    let plain = knapsec_plain::evaluate(&model, &weights, &input).unwrap();
    let logits = Tensor::from_slice(&plain.logits()).view([1, -1]);
    let diff = max_abs(&logits, &want);
    // 16 fractional bits over 20 layers of a random network (docs/architectures.md).
    assert!(
        diff < 1e-2 * scale,
        "plain fixed point differs by {diff} (scale {scale})"
    );
}
