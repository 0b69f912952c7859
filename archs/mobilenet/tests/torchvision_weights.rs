//! torchvision's ImageNet MobileNetV2 weights in `mobilenetv2-imagenet`: on two real
//! photographs the logits match PyTorch's within 1e-4 and the top-1 labels agree, and the
//! exported secure model (BN folded, fixed point) predicts the same labels.
//!
//! Fixtures (made by `tests/fixtures/make_fixtures.py` with torch + torchvision):
//! `china_224.npy`, `flower_224.npy` (scikit-learn's sample photographs after torchvision's
//! `Resize(256)` + `CenterCrop(224)`, uint8 `[3, 224, 224]`) and `mobilenet_v2_logits.npy`
//! (torchvision's logits, f32 `[2, 1000]`). The weights are not committed: `./setup.sh`
//! downloads `mobilenet_v2-b0353104.pth` and converts it to
//! `$KNAPSEC_DATA/mobilenet_v2/mobilenet_v2-b0353104.safetensors` with
//! `tests/fixtures/convert_torch_checkpoint.py` (no torch needed).

#![cfg(feature = "torch")]

use knapsec_arch_mobilenet::NAME;
use knapsec_core::ArchOptions;
use knapsec_nn::export::eval_graph;
use knapsec_nn::net::Network;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const MEAN: [f64; 3] = [0.485, 0.456, 0.406];
const STD: [f64; 3] = [0.229, 0.224, 0.225];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn weights_path() -> PathBuf {
    let data = std::env::var_os("KNAPSEC_DATA").unwrap_or_else(|| {
        panic!("KNAPSEC_DATA is not set: run this test through ./setup.sh (e.g. `./setup.sh cargo test ...`), which fetches the MobileNetV2 weights")
    });
    let path = PathBuf::from(data).join("mobilenet_v2/mobilenet_v2-b0353104.safetensors");
    assert!(
        path.is_file(),
        "{} is missing: run ./setup.sh to download and convert torchvision's MobileNetV2 weights",
        path.display()
    );
    path
}

/// The two crops, scaled to [0, 1] and normalised with the ImageNet mean and std.
fn images() -> Tensor {
    let crops: Vec<Tensor> = ["china_224.npy", "flower_224.npy"]
        .iter()
        .map(|f| Tensor::read_npy(fixtures().join(f)).expect("fixture crop"))
        .collect();
    let x = Tensor::stack(&crops, 0).to_kind(Kind::Float) / 255.0;
    assert_eq!(x.size(), [2, 3, 224, 224]);
    let mean = Tensor::from_slice(&MEAN)
        .to_kind(Kind::Float)
        .view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&STD)
        .to_kind(Kind::Float)
        .view([1, 3, 1, 1]);
    (x - mean) / std
}

#[test]
fn torchvision_weights_reproduce_pytorch_logits_on_photographs() {
    let mut network =
        Network::build(NAME, &ArchOptions::default(), Device::Cpu).expect("registered network");
    network
        .load_weights(&weights_path())
        .expect("torchvision's weights load");
    let x = images();
    let logits = tch::no_grad(|| network.net.forward_t(&x, false)).unwrap();
    let golden = Tensor::read_npy(fixtures().join("mobilenet_v2_logits.npy")).unwrap();
    assert_eq!(logits.size(), golden.size());
    let diff = f64::try_from((&logits - &golden).abs().max()).unwrap();
    println!("max |logit - torchvision| = {diff:e}");
    assert!(diff < 1e-4, "logits differ from torchvision's by {diff}");
    let top1 = Vec::<i64>::try_from(logits.argmax(1, false)).unwrap();
    assert_eq!(top1, Vec::<i64>::try_from(golden.argmax(1, false)).unwrap());
    assert_eq!(top1[0], 698, "china.jpg is a palace (ImageNet class 698)");

    // The exported secure model (BN folded, 16 fractional bits) predicts the same labels.
    let (model, weights) = network.export(16).unwrap();
    let z = eval_graph(&model, &weights, &x)
        .unwrap()
        .view([2, 1000])
        .to_kind(Kind::Float);
    let export_diff = f64::try_from((&z - &logits).abs().max()).unwrap();
    println!("max |exported - network| = {export_diff:e}");
    assert!(
        export_diff < 0.05,
        "the exported model differs by {export_diff}"
    );
    assert_eq!(Vec::<i64>::try_from(z.argmax(1, false)).unwrap(), top1);
}

#[test]
fn relu_variant_loads_the_same_weights() {
    let options = ArchOptions {
        variant: Some("relu".into()),
        ..Default::default()
    };
    let mut network = Network::build(NAME, &options, Device::Cpu).unwrap();
    network.load_weights(&weights_path()).unwrap();
    let logits = tch::no_grad(|| network.net.forward_t(&images(), false)).unwrap();
    let golden = Tensor::read_npy(fixtures().join("mobilenet_v2_logits.npy")).unwrap();
    // Without the clamp at 6 the network computes something else, but not nonsense.
    assert!(f64::try_from((&logits - &golden).abs().max()).unwrap() > 1e-3);
    assert_eq!(logits.size(), [2, 1000]);
}
