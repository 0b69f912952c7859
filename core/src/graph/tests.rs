//! Unit tests of the secure-model graph: validation, shapes, weights and their files.

use super::*;

fn tiny() -> (SecureModel, ModelWeights) {
    let nodes = vec![
        Node {
            name: "input".into(),
            op: Op::Input,
            inputs: vec![],
            shape: [1, 4, 4],
        },
        Node {
            name: "conv".into(),
            op: Op::Conv2d {
                weight: "conv.w".into(),
                bias: Some("conv.b".into()),
                kernel: [3, 3],
                stride: [1, 1],
                padding: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
            inputs: vec![0],
            shape: [2, 4, 4],
        },
        Node {
            name: "relu".into(),
            op: Op::BlockRelu {
                layer: "relu".into(),
                blocks: vec![BlockSize::RELU, BlockSize::Identity],
            },
            inputs: vec![1],
            shape: [2, 4, 4],
        },
    ];
    let model = SecureModel::new("toy", 12, OutputKind::Segmentation, nodes);
    let w = ModelWeights::default()
        .with("conv.w", vec![2, 1, 3, 3], (0..18).collect())
        .with("conv.b", vec![2], vec![-5, 7]);
    (model, w)
}

#[test]
fn format_1_still_loads_and_calibration_needs_format_2() {
    use crate::drelu::{Calibration, CalibrationTarget, DreluWindow, SiteCalibration};
    let (mut m, _) = tiny();
    m.format = 1;
    let text = ron::to_string(&m).unwrap();
    assert!(!text.contains("calibration"), "{text}");
    let back: SecureModel = ron::from_str(&text).unwrap();
    back.validate().unwrap();
    m.calibration = Some(Calibration {
        data: "x".into(),
        samples: 1,
        target: CalibrationTarget::default(),
        sites: vec![SiteCalibration {
            node: 2,
            name: "relu".into(),
            kind: SiteKind::BlockRelu,
            window: DreluWindow {
                bits: 12,
                lsb_ignored: 3,
            },
            stats: Default::default(),
        }],
    });
    assert!(m.validate().unwrap_err().to_string().contains("version 2"));
    m.format = MODEL_FORMAT;
    m.validate().unwrap();
    let hash = m.public_hash();
    m.calibration.as_mut().unwrap().sites[0].window.bits = 13;
    assert_ne!(m.public_hash(), hash, "the hash covers the windows");
    m.calibration.as_mut().unwrap().sites[0].node = 1;
    assert!(
        m.validate()
            .unwrap_err()
            .to_string()
            .contains("not a DReLU site")
    );
}

#[test]
fn round_trip_and_hash() {
    let (m, w) = tiny();
    m.validate().unwrap();
    w.check_against(&m).unwrap();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    w.save(dir.path()).unwrap();
    let m2 = SecureModel::load(dir.path()).unwrap();
    assert_eq!(m2, m);
    assert_eq!(m2.public_hash(), m.public_hash());
    assert_eq!(ModelWeights::load(dir.path()).unwrap(), w);
    assert_eq!(m.drelus(), 16);
    let mut other = m.clone();
    other.frac_bits = 13;
    assert_ne!(other.public_hash(), m.public_hash());
}

#[test]
fn structural_errors_name_the_node() {
    let (mut m, mut w) = tiny();
    m.nodes[2].inputs = vec![2];
    assert!(
        m.validate()
            .unwrap_err()
            .to_string()
            .contains("node 2 (relu)")
    );
    let (m, _) = tiny();
    w.tensors.get_mut("conv.w").unwrap().data.pop();
    assert!(
        w.check_against(&m)
            .unwrap_err()
            .to_string()
            .contains("conv.w")
    );
}

#[test]
fn fixed_point() {
    assert_eq!(encode_fixed(1.5, 12), 6144);
    assert_eq!(decode_fixed(-6144, 12), -1.5);
}

fn conv_op(kernel: u32, stride: u32, padding: u32, groups: u32) -> Op {
    Op::Conv2d {
        weight: "conv.w".into(),
        bias: None,
        kernel: [kernel; 2],
        stride: [stride; 2],
        padding: [padding; 2],
        dilation: [1, 1],
        groups,
    }
}

/// `validate`'s error for `tiny()` after `edit`.
fn invalid(edit: impl FnOnce(&mut SecureModel)) -> String {
    let (mut m, _) = tiny();
    edit(&mut m);
    m.validate().unwrap_err().to_string()
}

#[test]
fn groups_must_divide_both_channel_counts() {
    // 1 input channel, 2 outputs, 4 groups: the executors divided by `out / groups = 0`.
    let e = invalid(|m| m.nodes[1].op = conv_op(3, 1, 1, 4));
    assert!(e.contains("node 1 (conv)") && e.contains("groups"), "{e}");
    let e = invalid(|m| m.nodes[1].op = conv_op(3, 1, 1, 0));
    assert!(e.contains("groups"), "{e}");
}

#[test]
fn frac_bits_have_a_maximum() {
    let e = invalid(|m| m.frac_bits = MAX_FRAC_BITS + 1);
    assert!(e.contains("fractional bits"), "{e}");
    let (mut m, _) = tiny();
    m.frac_bits = MAX_FRAC_BITS;
    m.validate().unwrap();
}

#[test]
fn recorded_shapes_must_match_the_inferred_ones() {
    let e = invalid(|m| m.nodes[1].shape = [2, 5, 4]);
    assert!(
        e.contains("node 1 (conv)") && e.contains("[2, 4, 4]"),
        "{e}"
    );
    // The ReLU's shape follows from the (consistent) conv.
    let e = invalid(|m| {
        m.nodes[1].shape = [2, 2, 2];
        m.nodes[1].op = conv_op(3, 2, 1, 1);
        m.nodes[2].shape = [2, 4, 4];
    });
    assert!(e.contains("node 2 (relu)"), "{e}");
    let e = invalid(|m| m.nodes[1].op = conv_op(0, 1, 1, 1));
    assert!(e.contains("kernel"), "{e}");
    let e = invalid(|m| m.nodes[1].op = conv_op(3, 0, 1, 1));
    assert!(e.contains("stride"), "{e}");
    let e = invalid(|m| m.nodes[1].op = conv_op(9, 1, 1, 1));
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn huge_shapes_are_refused_not_overflowed() {
    let e = invalid(|m| {
        m.nodes[0].shape = [1, u32::MAX, u32::MAX];
        m.nodes[1].shape = [2, u32::MAX, u32::MAX];
        m.nodes[2].shape = [2, u32::MAX, u32::MAX];
    });
    assert!(e.contains("too large"), "{e}");
    let e = invalid(|m| {
        m.nodes[1].op = conv_op(u32::MAX, 1, u32::MAX, 1);
    });
    assert!(e.contains("node 1"), "{e}");
    let e = invalid(|m| m.nodes[0].shape = [1, 0, 4]);
    assert!(e.contains("node 0"), "{e}");
}

#[test]
fn every_op_is_shape_checked() {
    // A linear layer on a 2x2 map and a pool padded past half its window.
    let (mut m, _) = tiny();
    m.nodes.push(Node {
        name: "fc".into(),
        op: Op::Linear {
            weight: "fc.w".into(),
            bias: None,
        },
        inputs: vec![2],
        shape: [3, 1, 1],
    });
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("node 3 (fc)") && e.contains("[C, 1, 1]"), "{e}");
    let (mut m, _) = tiny();
    m.nodes.push(Node {
        name: "pool".into(),
        op: Op::MaxPool {
            kernel: [2, 2],
            stride: [1, 1],
            padding: [2, 2],
            pad_end: None,
            ceil_mode: false,
        },
        inputs: vec![2],
        shape: [2, 7, 7],
    });
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("pads"), "{e}");
    let (mut m, _) = tiny();
    m.nodes.push(Node {
        name: "cat".into(),
        op: Op::Concat,
        inputs: vec![2, 0],
        shape: [3, 4, 4],
    });
    m.validate().unwrap();
    m.nodes[3].shape = [4, 4, 4];
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("[3, 4, 4]"), "{e}");
}

#[test]
fn format_3_ops_validate_and_need_format_3() {
    let (mut m, _) = tiny();
    // pad → [2, 5, 7]; ceil max pool k2 s2 → [2, 3, 4]; bilinear resize → [2, 6, 8];
    // avg pool with asymmetric pads → [2, 3, 4].
    let ops = [
        (Op::Pad { pads: [0, 1, 1, 2] }, [2, 5, 7]),
        (
            Op::MaxPool {
                kernel: [2, 2],
                stride: [2, 2],
                padding: [0, 0],
                pad_end: None,
                ceil_mode: true,
            },
            [2, 3, 4],
        ),
        (
            Op::Resize {
                height: 6,
                width: 8,
                mode: ResizeMode::Bilinear {
                    align_corners: false,
                },
            },
            [2, 6, 8],
        ),
        (
            Op::AvgPool {
                kernel: [3, 3],
                stride: [2, 2],
                padding: [1, 0],
                pad_end: Some([0, 1]),
                ceil_mode: false,
                count_include_pad: true,
            },
            [2, 3, 4],
        ),
    ];
    for (k, (op, shape)) in ops.into_iter().enumerate() {
        m.nodes.push(Node {
            name: format!("n{k}"),
            op,
            inputs: vec![m.nodes.len() - 1],
            shape,
        });
    }
    m.validate().unwrap();
    let text = ron::to_string(&m).unwrap();
    let back = SecureModel::from_ron(&text).unwrap();
    assert_eq!(back, m);
    // A floor-mode symmetric pool writes no new field: older readers see the same text.
    assert_eq!(text.matches("pad_end").count(), 1, "{text}");
    assert_eq!(text.matches("ceil_mode").count(), 1, "{text}");
    for version in [1, 2] {
        m.format = version;
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("node 3 (n0)") && e.contains("version 3"), "{e}");
    }
    m.format = MODEL_FORMAT;
    // A wrong recorded shape and a pad as large as the window are named.
    m.nodes[5].shape = [2, 6, 9];
    assert!(
        m.validate()
            .unwrap_err()
            .to_string()
            .contains("node 5 (n2)")
    );
    m.nodes[5].shape = [2, 6, 8];
    if let Op::AvgPool { pad_end, .. } = &mut m.nodes[6].op {
        *pad_end = Some([3, 0]);
    }
    let e = m.validate().unwrap_err().to_string();
    assert!(e.contains("smaller than the window"), "{e}");
}

/// `model.ron` texts as builds before format 3 wrote them load, and the ops they hold are
/// written back as they were (their pooling fields unchanged); the format-3 fuzz seed loads.
#[test]
fn model_files_of_formats_1_and_2_still_load() {
    let old = include_str!("../../../fuzz/seeds/secure_model/every_op.ron");
    let m = SecureModel::from_ron(old).unwrap();
    assert_eq!(m.format, 1);
    let text = ron::to_string(&m.nodes).unwrap();
    assert!(
        text.contains("AvgPool(kernel:(3,3),stride:(1,1),padding:(1,1),count_include_pad:false)"),
        "{text}"
    );
    assert!(
        text.contains("MaxPool(kernel:(3,3),stride:(1,1),padding:(1,1))"),
        "{text}"
    );
    let new = include_str!("../../../fuzz/seeds/secure_model/format3_ops.ron");
    let m = SecureModel::from_ron(new).unwrap();
    assert_eq!(m.output_shape(), [2, 8, 20]);
    let mut old = SecureModel::from_ron(new).unwrap();
    old.format = 2;
    assert!(old.validate().is_err());
}

#[test]
fn all_drelus_counts_every_site_and_drelus_only_the_relu_layers() {
    let (mut model, _) = tiny();
    model.nodes.push(Node {
        name: "relu6".into(),
        op: Op::Relu6 {
            layer: "relu6".into(),
        },
        inputs: vec![2],
        shape: [2, 4, 4],
    });
    model.nodes.push(Node {
        name: "pool".into(),
        op: Op::MaxPool {
            kernel: [2, 2],
            stride: [2, 2],
            padding: [0, 0],
            pad_end: None,
            ceil_mode: false,
        },
        inputs: vec![3],
        shape: [2, 2, 2],
    });
    model.validate().unwrap();
    // one ReLU channel of 4×4; 2 per ReLU6 value; 3 comparisons per max-pool output
    assert_eq!(model.drelus(), 16);
    assert_eq!(model.all_drelus(), 16 + 2 * 32 + 3 * 8);
}
