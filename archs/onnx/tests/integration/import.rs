//! ONNX import without libtorch: layer tables, secure graphs, refusals (fixtures made by
//! `fixtures/make_fixtures.py`).

use crate::support::fixture;
use knapsec_arch_onnx::proto::{GraphProto, ModelProto, OperatorSetIdProto};
use knapsec_arch_onnx::{OnnxError, import, load};
use knapsec_core::graph::Op;
use knapsec_core::{ArchOptions, Registry};
use prost::Message;

fn cifar_options() -> ArchOptions {
    ArchOptions::fashion_mnist()
}

#[test]
fn resnet18_cifar_matches_the_builtin() {
    let imported = load(&fixture("resnet18_cifar_w16.onnx")).unwrap();
    assert_eq!(imported.opset, 17);
    let plan = knapsec_arch_resnet::ResNetPlan::new("resnet18-cifar", &cifar_options()).unwrap();
    let builtin = plan.layer_table().unwrap();
    let table = imported.desc.layer_table().unwrap();
    assert_eq!(table.layers, builtin.layers);
    assert_eq!(table.drelus(), builtin.drelus());
    // The secure graphs have the same ops and shapes (names differ: ONNX node names).
    let (ours, params) = imported.desc.secure_graph(None, 12).unwrap();
    let (theirs, their_params) = plan.secure_graph(None, 12).unwrap();
    let kinds = |m: &knapsec_core::graph::SecureModel| -> Vec<(String, [u32; 3])> {
        m.nodes
            .iter()
            .map(|n| {
                let k = format!("{:?}", n.op);
                (
                    k.split([' ', '{', '(']).next().unwrap().to_string(),
                    n.shape,
                )
            })
            .collect()
    };
    // The same ops and shapes; the exporter puts a downsample convolution after the branch.
    let (mut a, mut b) = (kinds(&ours), kinds(&theirs));
    a.sort();
    b.sort();
    assert_eq!(a, b);
    assert_eq!(params.len(), their_params.len());
    assert!(
        params
            .iter()
            .all(|p| p.bn.is_some() || p.module == "head_fc_Gemm")
    );
    // Every initializer became a weight under a description key.
    assert_eq!(
        imported.keys["backbone.layer2.0.downsample.1.running_var"],
        "backbone_layer2_0_downsample_1.running_var"
    );
    assert_eq!(imported.keys["head.fc.weight"], "head_fc_Gemm.weight");
}

#[test]
fn concat_and_ceil_mode_pooling() {
    let imported = load(&fixture("small_concat_ceil.onnx")).unwrap();
    let t = imported.desc.layer_table().unwrap();
    let shapes: Vec<(&str, u32, u32, u32)> = t
        .layers
        .iter()
        .map(|l| (l.name.as_str(), l.channels, l.height, l.width))
        .collect();
    assert_eq!(
        shapes,
        vec![
            ("features_features_1_Relu", 8, 20, 20),
            ("features_features_3_squeeze_activation_Relu", 4, 10, 10),
            ("features_features_3_expand1x1_activation_Relu", 8, 10, 10),
            ("features_features_3_expand3x3_activation_Relu", 8, 10, 10),
            ("classifier_classifier_2_Relu", 10, 5, 5),
        ]
    );
    let concat = imported.desc.find("features_features_3_Concat").unwrap();
    assert_eq!(imported.desc.nodes[concat].shape, [16, 10, 10]);
    // Ceil mode makes 20 -> 10 and 10 -> 5 where floor would give 9 and 4: the secure
    // graph's max poolings keep their ceil mode.
    let (model, _) = imported.desc.secure_graph(None, 12).unwrap();
    let ceil: Vec<(&str, [u32; 3])> = model
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op,
                Op::MaxPool {
                    ceil_mode: true,
                    ..
                }
            )
        })
        .map(|n| (n.name.as_str(), n.shape))
        .collect();
    assert_eq!(
        ceil,
        vec![
            ("features_features_2_MaxPool", [8, 10, 10]),
            ("features_features_4_MaxPool", [16, 5, 5])
        ]
    );
}

#[test]
fn ops_zoo_imports_every_operator() {
    let imported = load(&fixture("ops_zoo.onnx")).unwrap();
    let d = &imported.desc;
    let names: Vec<String> = d
        .layer_table()
        .unwrap()
        .layers
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, vec!["act_Clip", "act_Relu", "act_Relu_2", "Relu_15"]);
    let kinds: Vec<&str> = d.nodes.iter().map(|n| n.op.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "input",
            "conv",
            "batchnorm",
            "relu6",
            "conv",
            "relu",
            "avgpool",
            "conv",
            "add",
            "relu",
            "resize",
            "conv",
            "relu",
            "global-avgpool",
            "flatten",
            "linear"
        ]
    );
    // The Pad folded into the convolution: pads (1, 1, 0, 0) + (0, 0, 1, 1).
    let c1 = &d.nodes[1];
    assert_eq!(c1.shape, [4, 12, 12]);
    assert!(
        format!("{:?}", c1.op).contains("pads: [1, 1, 1, 1]"),
        "{:?}",
        c1.op
    );
    assert_eq!(d.output_shape(), [5, 1, 1]);
    assert_eq!(imported.weights["fc_MatMul.weight"].shape, vec![5, 4]);
    assert_eq!(imported.weights["fc_MatMul.bias"].shape, vec![5]);
}

#[test]
fn unsupported_ops_are_listed_before_any_work() {
    let err = load(&fixture("unsupported.onnx")).unwrap_err();
    assert!(matches!(err, OnnxError::Unsupported { .. }));
    let msg = err.to_string();
    for part in [
        "HardSwish (nodes /b1/HardSwish)",
        "Mul (nodes /stem/act/Mul)",
        "Sigmoid (nodes /stem/act/Sigmoid)",
        "supported: Add, AveragePool, BatchNormalization",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
}

#[test]
fn efficientnet_b0_exported_by_torch_is_refused_in_one_list() {
    // torchvision's EfficientNet-B0 (make_torch_fixtures.py): SiLU exported as Sigmoid · Mul,
    // squeeze-and-excitation's scaling as Mul; nothing else is missing.
    let err = load(&fixture("efficientnet_b0.onnx")).unwrap_err();
    let OnnxError::Unsupported { .. } = &err else {
        panic!("not refused as unsupported: {err}");
    };
    let msg = err.to_string();
    for part in [
        "unsupported ONNX operators: Mul (nodes /features/features.0/features.0.2/Mul, ",
        "Sigmoid (nodes /features/features.0/features.0.2/Sigmoid, ",
        "and 57 more",
        "supported: Add, AveragePool, BatchNormalization",
    ] {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    let listed = msg.split("; supported:").next().unwrap();
    assert_eq!(listed.matches(" (nodes ").count(), 2, "{msg}");
}

#[test]
fn opsets_outside_11_to_21_are_refused() {
    for (version, ok) in [(10, false), (11, true), (21, true), (22, false)] {
        let model = ModelProto {
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version,
            }],
            graph: Some(GraphProto::default()),
            ..Default::default()
        };
        let r = import(&model.encode_to_vec(), "onnx:x");
        match r {
            Err(OnnxError::Opset { found }) => assert!(!ok && found == version),
            // A valid opset goes on to the graph, which has no input.
            Err(OnnxError::Graph(msg)) => assert!(ok, "{msg}"),
            other => panic!("opset {version}: {other:?}"),
        }
    }
}

#[test]
fn truncated_files_are_refused() {
    let bytes = std::fs::read(fixture("small_concat_ceil.onnx")).unwrap();
    for cut in [1, 100, bytes.len() / 2, bytes.len() - 1] {
        assert!(import(&bytes[..cut], "onnx:x").is_err(), "cut at {cut}");
    }
}

#[test]
fn registry_loads_onnx_names() {
    let registry = Registry::builtin().unwrap();
    let path = fixture("small_concat_ceil.onnx");
    let name = format!("onnx:{}", path.display());
    let arch = registry.arch(&name).unwrap();
    assert_eq!(arch.name(), name);
    assert_eq!(
        arch.layer_table(&ArchOptions::default())
            .unwrap()
            .layers
            .len(),
        5
    );
    assert!(arch.layer_table(&cifar_options()).is_err());
    assert!(
        arch.network_summary()
            .unwrap()
            .contains("slot features_features_1_Relu")
    );
    let err = registry
        .arch("onnx:/no/such/file.onnx")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("/no/such/file.onnx"), "{err}");
    assert!(matches!(
        import(&[], "x").err().unwrap(),
        OnnxError::Graph(_)
    ));
    let _ = Op::Input;
}

#[test]
fn the_adapter_builds_the_secure_graph_without_libtorch() {
    let registry = Registry::builtin().unwrap();
    let name = format!("onnx:{}", fixture("squeezenet1_1_64.onnx").display());
    let adapter = registry.arch(&name).unwrap();
    let table = adapter.layer_table(&ArchOptions::default()).unwrap();
    let model = adapter
        .secure_graph(&ArchOptions::default(), None, 12)
        .unwrap()
        .expect("an imported network has a secure graph");
    model.validate().unwrap();
    let relus: Vec<&str> = model
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::BlockRelu { layer, .. } => Some(layer.as_str()),
            _ => None,
        })
        .collect();
    let slots: Vec<&str> = table.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(relus, slots);
    // The three ceil-mode max poolings keep their size at 64x64, so they have a secure form.
    let pools = model
        .nodes
        .iter()
        .filter(|n| matches!(n.op, Op::MaxPool { .. }))
        .count();
    assert_eq!(pools, 3);
    assert!(
        adapter
            .secure_graph(
                &ArchOptions {
                    classes: Some(3),
                    ..Default::default()
                },
                None,
                12
            )
            .is_err()
    );
    // ops_zoo's nearest-neighbour upsampling of a 6x6 map is a resize node.
    let zoo = registry
        .arch(&format!("onnx:{}", fixture("ops_zoo.onnx").display()))
        .unwrap();
    let model = zoo
        .secure_graph(&ArchOptions::default(), None, 12)
        .unwrap()
        .expect("an imported network has a secure graph");
    let up = model.nodes.iter().find(|n| n.name == "up_Resize").unwrap();
    assert_eq!(
        up.op,
        Op::Resize {
            height: 12,
            width: 12,
            mode: knapsec_core::graph::ResizeMode::Nearest
        }
    );
}
