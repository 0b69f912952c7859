//! Imported networks in secure inference (cargo feature `torch`): the fixtures whose ops need
//! the secure graph's padding, ceil-mode pooling and resizing (`small_concat_ceil.onnx`: a
//! ceil-mode max pooling 20 → 10; `ops_zoo.onnx`: a nearest ×2 resize) export, and their
//! logits in the `plain` fixed-point oracle, in `securenn` and in `fss` agree with the tch
//! interpreter's and onnxruntime's; and a segmentation network built here as an ONNX file
//! (convolutions with asymmetric pads, max and average pooling in ceil mode with asymmetric
//! pads and after constant-0 `Pad`s, bilinear resizes ×2 and ×8 in both coordinate modes
//! PyTorch exports) reveals the label map of `plain` in both secure backends.

use crate::support::{arch, fixture, max_abs, test_input};
use knapsec_arch_onnx::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, TypeProtoTensor, ValueInfoProto, data_type,
};
use knapsec_core::ArchOptions;
use knapsec_core::backend::PartyOutput;
use knapsec_core::graph::{ModelWeights, Op, SecureModel};
use knapsec_nn::Network;
use knapsec_nn::tch::{self, Device, Tensor};
use prost::Message;
use std::time::Duration;

const FRAC_BITS: u32 = 16;

/// onnxruntime's outputs in `NAME.ref.json` and the input shape they came from.
fn onnxruntime(name: &str) -> (Vec<i64>, Tensor) {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ints = |k: &str| -> Vec<i64> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    let out: Vec<f32> = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (
        ints("input_shape"),
        Tensor::from_slice(&out).reshape(ints("output_shape")),
    )
}

/// One inference of `model` in each secure backend (exact DReLU), revealing `reveal`.
fn secure(
    model: &SecureModel,
    weights: &ModelWeights,
    x: &[f32],
    reveal: knapsec_securenn::Reveal,
) -> [PartyOutput; 2] {
    let options = knapsec_securenn::Options {
        drelu: knapsec_securenn::DreluMode::Exact,
        reveal,
    };
    let timeout = Some(Duration::from_secs(600));
    let s = knapsec_securenn::simulate(model, weights, x, options, timeout).unwrap();
    let f = knapsec_fss::simulate(model, weights, x, options, timeout).unwrap();
    [s.output, f.output]
}

/// One inference of `model` in each secure backend, revealing the logits.
fn secure_logits(model: &SecureModel, weights: &ModelWeights, x: &[f32]) -> [Vec<f32>; 2] {
    secure(model, weights, x, knapsec_securenn::Reveal::Logits).map(|o| match o {
        PartyOutput::Logits(v) => v,
        other => panic!("expected logits, got {other:?}"),
    })
}

/// The exported fixture's logits, image by image: plain within `1e-3·scale` of the
/// interpreter and of onnxruntime, each secure backend within a few ulps of plain (the
/// truncations of its shares) and with its top-1 label.
fn fixture_runs_securely(name: &str, needs: impl Fn(&Op) -> bool) {
    let network = Network::build(&arch(name), &ArchOptions::default(), Device::Cpu).unwrap();
    let (shape, ort) = onnxruntime(&name.replace(".onnx", ".ref.json"));
    let x = test_input([shape[0], shape[1], shape[2], shape[3]]);
    let interp = tch::no_grad(|| network.net.forward_t(&x, false)).unwrap();
    let interp = interp.reshape([shape[0], -1]);
    let ort = ort.reshape([shape[0], -1]);
    assert!(max_abs(&interp, &ort) < 1e-4, "{name}: interpreter");
    let (model, weights) = network.export(FRAC_BITS).unwrap();
    assert!(
        model.nodes.iter().any(|n| needs(&n.op)),
        "{name}: the export has none of the ops this test is about"
    );
    // The export round trip: what the parties load.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    weights.save(dir.path()).unwrap();
    let model = SecureModel::load(dir.path()).unwrap();
    let weights = ModelWeights::load(dir.path()).unwrap();
    let scale = f64::try_from(ort.abs().max()).unwrap().max(1.0);
    let ulp = 1.0 / f64::from(1u32 << FRAC_BITS);
    for b in 0..shape[0] {
        let input: Vec<f32> = Vec::try_from(x.get(b).flatten(0, -1)).unwrap();
        let plain = knapsec_plain::evaluate(&model, &weights, &input).unwrap();
        let p = Tensor::from_slice(&plain.logits());
        let (d_interp, d_ort) = (max_abs(&p, &interp.get(b)), max_abs(&p, &ort.get(b)));
        println!(
            "{name}[{b}]: |plain - interpreter| {d_interp:e}, |plain - onnxruntime| {d_ort:e}"
        );
        assert!(
            d_interp < 1e-3 * scale && d_ort < 1e-3 * scale,
            "{name}[{b}]"
        );
        for (backend, got) in ["securenn", "fss"]
            .iter()
            .zip(secure_logits(&model, &weights, &input))
        {
            let got = Tensor::from_slice(&got);
            let d = max_abs(&got, &p);
            println!("{name}[{b}]: |{backend} - plain| {d:e}");
            assert!(
                d <= 64.0 * ulp,
                "{name}[{b}]: {backend} differs from plain by {d}"
            );
            assert_eq!(
                i64::try_from(got.argmax(0, false)).unwrap(),
                i64::try_from(ort.get(b).argmax(0, false)).unwrap(),
                "{name}[{b}]: {backend}'s top-1"
            );
        }
    }
}

#[test]
fn small_concat_ceil_exports_and_runs_securely() {
    // Ceil-mode max pooling 20 → 10 (floor mode would give 9).
    fixture_runs_securely("small_concat_ceil.onnx", |op| {
        matches!(
            op,
            Op::MaxPool {
                ceil_mode: true,
                ..
            }
        )
    });
}

#[test]
fn ops_zoo_exports_and_runs_securely() {
    // Nearest ×2 upsampling of a 6×6 map.
    fixture_runs_securely("ops_zoo.onnx", |op| matches!(op, Op::Resize { .. }));
}

/// A small ONNX graph written here, with ONNX's own encoding (`prost`): nodes, float
/// initializers drawn from a formula, one `[1, C, H, W]` input.
struct OnnxBuilder {
    graph: GraphProto,
    seed: u32,
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

fn string(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: 3,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

impl OnnxBuilder {
    fn new(input: [i64; 4]) -> Self {
        let dim = |v| Dimension {
            dim_value: Some(v),
            dim_param: None,
        };
        let graph = GraphProto {
            name: "built".into(),
            input: vec![ValueInfoProto {
                name: "input".into(),
                r#type: Some(TypeProto {
                    tensor_type: Some(TypeProtoTensor {
                        elem_type: data_type::FLOAT,
                        shape: Some(TensorShapeProto {
                            dim: input.iter().map(|&v| dim(v)).collect(),
                        }),
                    }),
                }),
            }],
            ..Default::default()
        };
        OnnxBuilder { graph, seed: 1 }
    }

    fn tensor(&mut self, name: &str, dims: &[i64], data: Vec<f32>) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type::FLOAT,
            float_data: data,
            name: name.into(),
            ..Default::default()
        });
        name.into()
    }

    /// Weights in ±1/√fan_in from a fixed formula (no RNG).
    fn weights(&mut self, name: &str, dims: &[i64]) -> String {
        let n: i64 = dims.iter().product();
        let fan = (n / dims[0]).max(1) as f32;
        self.seed += 1;
        let s = self.seed as f32;
        let data = (0..n)
            .map(|i| ((i as f32 * 0.731 + s * 1.37).sin()) / fan.sqrt())
            .collect();
        self.tensor(name, dims, data)
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        name: &str,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let out = format!("{name}_out");
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: name.into(),
            op_type: op.into(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// A `k × k` convolution `[cin → cout]` with a bias.
    fn conv(
        &mut self,
        x: &str,
        name: &str,
        [cin, cout, k]: [i64; 3],
        stride: i64,
        pads: [i64; 4],
    ) -> String {
        let w = self.weights(&format!("{name}.weight"), &[cout, cin, k, k]);
        let b = self.weights(&format!("{name}.bias"), &[cout]);
        let attrs = vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[stride, stride]),
            ints("pads", &pads),
        ];
        self.node("Conv", &[x, &w, &b], name, attrs)
    }

    /// A constant-0 `Pad` of the height and width (`[top, left, bottom, right]`).
    fn pad(&mut self, x: &str, name: &str, [t, l, b, r]: [i64; 4]) -> String {
        let pads = self.graph.initializer.len();
        self.graph.initializer.push(TensorProto {
            dims: vec![8],
            data_type: data_type::INT64,
            int64_data: vec![0, 0, t, l, 0, 0, b, r],
            name: format!("{name}.pads"),
            ..Default::default()
        });
        let pads = self.graph.initializer[pads].name.clone();
        self.node("Pad", &[x, &pads], name, vec![string("mode", "constant")])
    }

    fn resize(&mut self, x: &str, name: &str, scale: f32, coord: &str) -> String {
        let scales = self.tensor(
            &format!("{name}.scales"),
            &[4],
            vec![1.0, 1.0, scale, scale],
        );
        let attrs = vec![
            string("mode", "linear"),
            string("coordinate_transformation_mode", coord),
        ];
        self.node("Resize", &[x, "", &scales], name, attrs)
    }

    fn finish(mut self, out: &str) -> Vec<u8> {
        self.graph.output = vec![ValueInfoProto {
            name: out.into(),
            r#type: None,
        }];
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            producer_name: "knapsec tests".into(),
            graph: Some(self.graph),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// A segmentation network of the forms the secure graph lowers: a strided convolution with
/// asymmetric (`SAME_UPPER`-like) pads, ceil-mode max pooling with top/left pads, max pooling
/// after a `Pad`, ceil-mode average pooling counting the padding (after a `Pad`) and not, a
/// bilinear ×2 resize (half-pixel) added to a skip connection, a classifier, and a bilinear
/// ×8 resize (aligned corners) to the map.
fn segmentation_onnx() -> Vec<u8> {
    let mut b = OnnxBuilder::new([1, 3, 15, 14]);
    let c1 = b.conv("input", "stem", [3, 6, 3], 2, [0, 0, 1, 1]); // 7×7
    let r1 = b.node("Relu", &[&c1], "stem_relu", vec![]);
    let p = b.node(
        "MaxPool",
        &[&r1],
        "pool",
        vec![
            ints("kernel_shape", &[2, 2]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 0, 0, 0]),
            int("ceil_mode", 1),
        ],
    ); // 4×4
    let c2 = b.conv(&p, "mid", [6, 6, 3], 1, [1, 1, 1, 1]);
    // A constant-0 Pad read by a max pooling: its zeros take part (and win where the
    // window's values are negative).
    let pc2 = b.pad(&c2, "mid_pad", [0, 0, 1, 1]);
    let m2 = b.node(
        "MaxPool",
        &[&pc2],
        "mid_pool",
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[1, 1])],
    ); // 4×4
    let r2 = b.node("Relu", &[&m2], "mid_relu", vec![]);
    let avg = |b: &mut OnnxBuilder, x: &str, name: &str, cip: i64| {
        b.node(
            "AveragePool",
            &[x],
            name,
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[1, 1]),
                ints("pads", &[1, 0, 0, 2]),
                int("ceil_mode", 1),
                int("count_include_pad", cip),
            ],
        )
    };
    // A Pad read by an average pooling: its zeros count as pixels.
    let pr2 = b.pad(&r2, "avg_pad", [0, 0, 1, 0]);
    let a1 = avg(&mut b, &pr2, "avg_in", 1); // 4×4
    let a2 = avg(&mut b, &pr2, "avg_ex", 0);
    let s = b.node("Add", &[&a1, &a2], "avg_sum", vec![]);
    let up = b.resize(&s, "up2", 2.0, "half_pixel"); // 8×8
    let skip = b.conv(&r1, "skip", [6, 6, 1], 1, [1, 0, 0, 1]); // 8×8
    let fused = b.node("Add", &[&up, &skip], "fuse", vec![]);
    let r3 = b.node("Relu", &[&fused], "fuse_relu", vec![]);
    let head = b.conv(&r3, "classifier", [6, 4, 1], 1, [0, 0, 0, 0]);
    let out = b.resize(&head, "up8", 8.0, "align_corners"); // 64×64
    b.finish(&out)
}

#[test]
fn segmentation_with_asymmetric_pads_ceil_pools_and_bilinear_resizes_runs_securely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("segmentation.onnx");
    std::fs::write(&path, segmentation_onnx()).unwrap();
    let name = format!("onnx:{}", path.display());
    let network = Network::build(&name, &ArchOptions::default(), Device::Cpu).unwrap();
    let x = test_input([1, 3, 15, 14]);
    let interp = tch::no_grad(|| network.net.forward_t(&x, false)).unwrap();
    assert_eq!(interp.size(), vec![1, 4, 64, 64]);
    let (model, weights) = network.export(FRAC_BITS).unwrap();
    let count = |f: &dyn Fn(&Op) -> bool| model.nodes.iter().filter(|n| f(&n.op)).count();
    // Two convolutions' asymmetric padding and the two Pads read by poolings.
    assert_eq!(count(&|op| matches!(op, Op::Pad { .. })), 4, "{model:#?}");
    assert_eq!(count(&|op| matches!(op, Op::Resize { .. })), 2);
    assert_eq!(count(&|op| op.needs_format_3()), 4 + 2 + 3);
    let input: Vec<f32> = Vec::try_from(x.flatten(0, -1)).unwrap();
    // The float evaluator of the export and the plain oracle against the interpreter.
    let scale = f64::try_from(interp.abs().max()).unwrap().max(1.0);
    let f = knapsec_nn::eval_graph(&model, &weights, &x).unwrap();
    let d = max_abs(&f, &interp);
    assert!(
        d < 1e-4 * scale,
        "float evaluation of the export differs by {d}"
    );
    let plain = knapsec_plain::evaluate(&model, &weights, &input).unwrap();
    let p = Tensor::from_slice(&plain.logits()).reshape([1, 4, 64, 64]);
    let d = max_abs(&p, &interp);
    println!("segmentation: |plain - interpreter| = {d:e} (scale {scale})");
    assert!(
        d < 1e-3 * scale,
        "plain differs from the interpreter by {d}"
    );
    // The secure logits are within a few ulps of plain's, and the label maps the secure
    // argmax reveals equal plain's (a pixel may differ only where plain's two best logits are
    // within the truncation noise).
    let ulp = 1.0 / f64::from(1u32 << FRAC_BITS);
    for (backend, got) in ["securenn", "fss"]
        .iter()
        .zip(secure_logits(&model, &weights, &input))
    {
        let d = max_abs(&Tensor::from_slice(&got).reshape([1, 4, 64, 64]), &p);
        println!("segmentation: |{backend} - plain| = {d:e}");
        assert!(
            d <= 64.0 * ulp,
            "{backend}: logits differ from plain by {d}"
        );
    }
    let maps = secure(&model, &weights, &input, knapsec_securenn::Reveal::Label);
    for (backend, got) in ["securenn", "fss"].iter().zip(maps) {
        let PartyOutput::Labels(labels) = got else {
            panic!("{backend}: expected a label map, got {got:?}");
        };
        let differ = labels
            .iter()
            .zip(plain.labels())
            .filter(|(a, b)| **a != *b)
            .count();
        println!("segmentation: {backend}'s label map differs from plain's in {differ} pixels");
        knapsec_plain::cases::check_label_map(&model, &weights, &input, &labels, 64, 0)
            .unwrap_or_else(|e| panic!("{backend}: {e}"));
    }
}
