//! Networks exported by PyTorch itself (`torch.onnx.export`, opset 17, eval mode), graph-only
//! files made by `fixtures/make_torch_fixtures.py` whose weights the tests supply:
//!
//! * the built-in `resnet18-cifar` (BatchNorm kept), filled with the weights of
//!   `resnet18_cifar_w16.onnx`: its layer table is the built-in's and its logits equal the
//!   built-in's on the same weights within 1e-5, and PyTorch's within 1e-4;
//! * torchvision's SqueezeNet 1.1 at 64×64 (Concat, ceil-mode max pooling), filled with the
//!   script's formula weights: the interpreter's logits equal PyTorch's within 1e-4, and the
//!   exported secure model's, in the `plain` fixed-point oracle and in a securenn inference,
//!   agree with PyTorch's within the tolerance of 16 fractional bits (docs/onnx.md);
//! * torchvision's MobileNetV2, filled with torchvision's ImageNet weights (the safetensors
//!   file `./setup.sh` installs): 35 layers, 15,552 channels, 6,105,792 DReLUs as the
//!   built-in's table, logits on the two photographs of `archs/mobilenet`'s fixtures equal
//!   torchvision's within 1e-4, the plain fixed-point oracle's top-1 labels equal them, and so
//!   does a securenn inference with exact DReLUs on the first;
//! * a graph-only file refuses to run without weights.

use crate::support::{arch, fixture, max_abs, test_input};
use knapsec_arch_mobilenet as _;
use knapsec_arch_onnx as _;
use knapsec_arch_resnet as _;
use knapsec_core::ArchOptions;
use knapsec_nn::Network;
use knapsec_nn::tch::{self, Device, Kind, Tensor};
use std::path::{Path, PathBuf};

/// PyTorch's outputs in `NAME.ref.json`.
fn reference(name: &str) -> Tensor {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shape: Vec<i64> = v["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let out: Vec<f32> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    Tensor::from_slice(&out).reshape(shape)
}

fn logits(network: &Network, x: &Tensor) -> Tensor {
    tch::no_grad(|| network.net.forward_t(x, false)).unwrap()
}

/// Writes `tensors` (name, shape, values) as a safetensors file in `dir`.
fn write_weights(dir: &Path, tensors: &[(String, Vec<i64>, Vec<f32>)]) -> PathBuf {
    let named: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, s, v)| (k.clone(), Tensor::from_slice(v).reshape(s.as_slice())))
        .collect();
    let path = dir.join("weights.safetensors");
    Tensor::write_safetensors(&named, &path).unwrap();
    path
}

/// The logits of one securenn inference (three parties in this process, exact DReLUs).
fn securenn_exact_logits(
    model: &knapsec_core::graph::SecureModel,
    weights: &knapsec_core::graph::ModelWeights,
    input: &[f32],
) -> Tensor {
    let options = knapsec_securenn::Options {
        drelu: knapsec_securenn::DreluMode::Exact,
        reveal: knapsec_securenn::Reveal::Logits,
    };
    let timeout = Some(std::time::Duration::from_secs(1200));
    let report = knapsec_securenn::simulate(model, weights, input, options, timeout).unwrap();
    let knapsec_core::backend::PartyOutput::Logits(secure) = report.output else {
        panic!("securenn revealed {:?}, not logits", report.output);
    };
    Tensor::from_slice(&secure)
}

#[test]
fn graph_only_files_need_weights() {
    let imported = knapsec_arch_onnx::load(&fixture("resnet18_cifar_w16_torch.onnx")).unwrap();
    assert_eq!(imported.opset, 17);
    assert_eq!(imported.missing.len(), imported.weights.len());
    // Initializer names are the PyTorch state_dict names, also behind the exporter's Identity
    // nodes for the BatchNorm statistics.
    assert!(imported.keys.contains_key("backbone.bn1.running_var"));
    assert!(imported.keys.contains_key("backbone.layer4.1.conv2.weight"));
    let registry = knapsec_core::Registry::builtin().unwrap();
    let adapter = registry
        .arch(&arch("resnet18_cifar_w16_torch.onnx"))
        .unwrap();
    assert!(!adapter.own_weights());
    let own = registry.arch(&arch("resnet18_cifar_w16.onnx")).unwrap();
    assert!(own.own_weights());
}

#[test]
fn resnet18_cifar_exported_by_torch_equals_the_builtin() {
    let name = "resnet18_cifar_w16_torch.onnx";
    let mut imported = Network::build(&arch(name), &ArchOptions::default(), Device::Cpu).unwrap();
    let options = ArchOptions::fashion_mnist();
    let mut builtin = Network::build("resnet18-cifar", &options, Device::Cpu).unwrap();
    assert_eq!(
        imported.net.slots().layer_table().unwrap().layers,
        builtin.net.slots().layer_table().unwrap().layers,
        "the imported layer table is the built-in's"
    );
    // The weights of resnet18_cifar_w16.onnx, keyed by their initializer (state_dict) names.
    let src = knapsec_arch_onnx::load(&fixture("resnet18_cifar_w16.onnx")).unwrap();
    let tensors: Vec<(String, Vec<i64>, Vec<f32>)> = src
        .keys
        .iter()
        .map(|(init, key)| {
            let w = &src.weights[key];
            let shape = w.shape.iter().map(|&d| d as i64).collect();
            (init.clone(), shape, w.data.clone())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_weights(dir.path(), &tensors);
    imported.load_weights(&path).unwrap();
    builtin.load_weights(&path).unwrap();
    let x = test_input([2, 1, 28, 28]);
    let a = logits(&imported, &x);
    let b = logits(&builtin, &x);
    let diff = max_abs(&a, &b);
    println!("resnet18-cifar: max |torch export - built-in| = {diff:e}");
    assert!(
        diff <= 1e-5,
        "imported and built-in logits differ by {diff}"
    );
    let torch = reference("resnet18_cifar_w16_torch.ref.json");
    let diff = max_abs(&a, &torch);
    assert!(diff <= 1e-4, "imported and PyTorch logits differ by {diff}");
}

/// The script's formula weights: tensor `t` (sorted key order) element `i` is
/// `((i·7919 + t·104729) mod 10007)/5003 − 1`, times `√(3/fan_in)` (weights) or 0.1 (1-D).
fn formula_weights(imported: &knapsec_arch_onnx::Imported) -> Vec<(String, Vec<i64>, Vec<f32>)> {
    imported
        .keys
        .iter()
        .enumerate()
        .map(|(t, (init, key))| {
            let shape = &imported.weights[key].shape;
            let n: usize = shape.iter().product();
            let scale = if shape.len() > 1 {
                (3.0 / shape[1..].iter().product::<usize>() as f64).sqrt()
            } else {
                0.1
            };
            let v = (0..n as i64)
                .map(|i| {
                    let u = ((i * 7919 + t as i64 * 104_729) % 10_007) as f64 / 5003.0 - 1.0;
                    (u * scale) as f32
                })
                .collect();
            (init.clone(), shape.iter().map(|&d| d as i64).collect(), v)
        })
        .collect()
}

#[test]
fn squeezenet_plain_and_secure_logits_agree_with_pytorch() {
    let name = "squeezenet1_1_64.onnx";
    let imported = knapsec_arch_onnx::load(&fixture(name)).unwrap();
    let kinds: Vec<&str> = imported.desc.nodes.iter().map(|n| n.op.kind()).collect();
    assert!(kinds.contains(&"concat") && kinds.contains(&"maxpool"));
    assert!(imported.desc.nodes.iter().any(|n| matches!(
        n.op,
        knapsec_core::netdesc::DescOp::MaxPool {
            ceil_mode: true,
            ..
        }
    )));
    let dir = tempfile::tempdir().unwrap();
    let path = write_weights(dir.path(), &formula_weights(&imported));
    let mut network = Network::build(&arch(name), &ArchOptions::default(), Device::Cpu).unwrap();
    network.load_weights(&path).unwrap();
    let x = test_input([2, 3, 64, 64]);
    let torch = reference("squeezenet1_1_64.ref.json");
    let got = logits(&network, &x);
    let diff = max_abs(&got, &torch);
    println!("squeezenet: max |interpreter - PyTorch| = {diff:e}");
    assert!(
        diff < 1e-4,
        "interpreter and PyTorch logits differ by {diff}"
    );

    let (model, weights) = network.export(16).unwrap();
    let scale = f64::try_from(torch.abs().max()).unwrap().max(1.0);
    let first: Vec<f32> = Vec::try_from(x.get(0).flatten(0, -1)).unwrap();
    let want = torch.get(0);
    let plain = knapsec_plain::evaluate(&model, &weights, &first).unwrap();
    let plain = Tensor::from_slice(&plain.logits());
    let diff = max_abs(&plain, &want);
    println!("squeezenet: max |plain fixed point - PyTorch| = {diff:e} (scale {scale})");
    assert!(
        diff < 1e-3 * scale,
        "plain and PyTorch logits differ by {diff}"
    );
    let secure = securenn_exact_logits(&model, &weights, &first);
    let diff = max_abs(&secure, &want);
    println!("squeezenet: max |securenn - PyTorch| = {diff:e}");
    assert!(
        diff < 1e-3 * scale,
        "securenn and PyTorch logits differ by {diff}"
    );
    assert_eq!(
        i64::try_from(secure.argmax(0, false)).unwrap(),
        i64::try_from(want.argmax(0, false)).unwrap()
    );
}

#[test]
fn mobilenet_v2_with_torchvision_weights_matches_torchvision() {
    let data = std::env::var_os("KNAPSEC_DATA").unwrap_or_else(|| {
        panic!("KNAPSEC_DATA is not set: run this test through ./setup.sh, which fetches the MobileNetV2 weights")
    });
    let weights = PathBuf::from(data).join("mobilenet_v2/mobilenet_v2-b0353104.safetensors");
    assert!(
        weights.is_file(),
        "{} is missing: run ./setup.sh",
        weights.display()
    );
    let name = "mobilenet_v2.onnx";
    let mut network = Network::build(&arch(name), &ArchOptions::default(), Device::Cpu).unwrap();
    network.load_weights(&weights).unwrap();
    let table = network.net.slots().layer_table().unwrap();
    assert_eq!(table.layers.len(), 35);
    assert_eq!(table.layers.iter().map(|l| l.channels).sum::<u32>(), 15_552);
    assert_eq!(table.drelus(), 6_105_792);
    let builtin = knapsec_core::Registry::builtin()
        .unwrap()
        .arch("mobilenetv2-imagenet")
        .unwrap()
        .layer_table(&ArchOptions::default())
        .unwrap();
    let shapes = |t: &knapsec_core::LayerTable| -> Vec<[u32; 3]> {
        t.layers
            .iter()
            .map(|l| [l.channels, l.height, l.width])
            .collect()
    };
    assert_eq!(shapes(&table), shapes(&builtin));

    // The two photographs of archs/mobilenet's fixtures, as that crate's test prepares them.
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mobilenet/tests/fixtures");
    let crops: Vec<Tensor> = ["china_224.npy", "flower_224.npy"]
        .iter()
        .map(|f| Tensor::read_npy(photos.join(f)).unwrap())
        .collect();
    let x = Tensor::stack(&crops, 0).to_kind(Kind::Float) / 255.0;
    let mean = Tensor::from_slice(&[0.485f32, 0.456, 0.406]).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&[0.229f32, 0.224, 0.225]).view([1, 3, 1, 1]);
    let x = (x - mean) / std;
    let golden = Tensor::read_npy(photos.join("mobilenet_v2_logits.npy")).unwrap();
    let got = logits(&network, &x);
    let diff = max_abs(&got, &golden);
    println!("mobilenet_v2: max |imported - torchvision| = {diff:e}");
    assert!(diff < 1e-4, "logits differ from torchvision's by {diff}");
    let top1 = Vec::<i64>::try_from(golden.argmax(1, false)).unwrap();
    assert_eq!(Vec::<i64>::try_from(got.argmax(1, false)).unwrap(), top1);
    assert_eq!(top1[0], 698, "china.jpg is a palace (ImageNet class 698)");

    // The exported secure model in the plain fixed-point oracle: the same labels; and one
    // secure inference (securenn, exact DReLUs, every ReLU6 kept): the same label too.
    let (model, weights) = network.export(16).unwrap();
    for (i, &want) in top1.iter().enumerate() {
        let input: Vec<f32> = Vec::try_from(x.get(i as i64).flatten(0, -1)).unwrap();
        let out = knapsec_plain::evaluate(&model, &weights, &input).unwrap();
        assert_eq!(i64::from(out.labels()[0]), want, "photograph {i}");
    }
    let first: Vec<f32> = Vec::try_from(x.get(0).flatten(0, -1)).unwrap();
    let secure = securenn_exact_logits(&model, &weights, &first);
    let diff = max_abs(&secure, &golden.get(0));
    println!("mobilenet_v2: max |securenn - torchvision| = {diff:e}");
    assert!(
        diff < 0.5,
        "securenn and torchvision logits differ by {diff}"
    );
    assert_eq!(i64::try_from(secure.argmax(0, false)).unwrap(), top1[0]);
}

#[test]
fn fmnist_small_carries_its_weights_and_equals_pytorch() {
    let name = "fmnist_small.onnx";
    let imported = knapsec_arch_onnx::load(&fixture(name)).unwrap();
    assert!(imported.missing.is_empty());
    let network = Network::build(&arch(name), &ArchOptions::default(), Device::Cpu).unwrap();
    let got = logits(&network, &test_input([2, 1, 28, 28]));
    let diff = max_abs(&got, &reference("fmnist_small.ref.json"));
    assert!(
        diff < 1e-4,
        "interpreter and PyTorch logits differ by {diff}"
    );
}
