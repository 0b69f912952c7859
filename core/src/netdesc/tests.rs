//! Unit tests of network descriptions: window sizes, shape inference, the layer table and
//! the secure graph, and the refusal of forms the graph lacks.

use super::*;
use crate::block::BlockSize;
use crate::spec::BlockSpec;

fn conv(module: &str, out: u32, k: u32, s: u32, p: u32) -> DescOp {
    DescOp::Conv {
        module: module.into(),
        bias: false,
        out_channels: out,
        kernel: [k, k],
        stride: [s, s],
        pads: [p; 4],
        dilation: [1, 1],
        groups: 1,
    }
}

fn relu(slot: &str) -> DescOp {
    DescOp::Act {
        slot: slot.into(),
        kind: ActKind::Relu,
    }
}

#[test]
fn ceil_mode_sizes_follow_pytorch() {
    // 6 with k3 s2: floor 2, ceil 3; 5 with k2 s2 p1 ceil: 4 would start in the padding.
    assert_eq!(window_out_padded(6, 3, 2, 0, 0, 1, false), Some(2));
    assert_eq!(window_out_padded(6, 3, 2, 0, 0, 1, true), Some(3));
    assert_eq!(window_out_padded(5, 2, 2, 1, 1, 1, true), Some(3));
    assert_eq!(window_out_padded(2, 3, 1, 0, 0, 1, false), None);
    assert_eq!(
        window_out_padded(u32::MAX, 1, 1, u32::MAX, 0, 1, false),
        None
    );
}

#[test]
fn residual_net_table_and_graph() {
    let mut d = NetDesc::new("toy", [1, 8, 8]).unwrap();
    let c1 = d.push("c1", conv("c1", 4, 3, 1, 1), &[0]).unwrap();
    let b1 = d
        .push(
            "b1",
            DescOp::BatchNorm {
                module: "b1".into(),
                eps: 1e-3,
            },
            &[c1],
        )
        .unwrap();
    let r1 = d.push("r1", relu("r1"), &[b1]).unwrap();
    let c2 = d.push("c2", conv("c2", 4, 3, 1, 1), &[r1]).unwrap();
    let a = d.push("add", DescOp::Add, &[c2, r1]).unwrap();
    let r2 = d.push("r2", relu("r2"), &[a]).unwrap();
    let p = d
        .push(
            "pool",
            DescOp::MaxPool {
                kernel: [3, 3],
                stride: [2, 2],
                pads: [0; 4],
                ceil_mode: false,
            },
            &[r2],
        )
        .unwrap();
    assert_eq!(d.nodes[p].shape, [4, 3, 3]);
    let g = d.push("gap", DescOp::GlobalAvgPool, &[r2]).unwrap();
    let f = d.push("flat", DescOp::Flatten, &[g]).unwrap();
    d.push(
        "fc",
        DescOp::Linear {
            module: "fc".into(),
            bias: true,
            out: 3,
        },
        &[f],
    )
    .unwrap();
    let t = d.layer_table().unwrap();
    assert_eq!(
        t.layers,
        vec![ReluLayer::new("r1", 4, 8, 8), ReluLayer::new("r2", 4, 8, 8)]
    );
    assert!(d.push("again", relu("r1"), &[r2]).is_err());
    assert!(d.push("bad", DescOp::Add, &[r2, p]).is_err());
    let (model, params) = d.secure_graph(None, 12).unwrap();
    assert_eq!(model.output_shape(), [3, 1, 1]);
    assert_eq!(model.drelus(), 2 * 4 * 64);
    assert_eq!(params[0].bn.as_deref(), Some("b1"));
    assert_eq!(params[0].bn_eps, 1e-3);
    assert_eq!(params.len(), 3);
    assert_eq!(d.param_shapes().len(), 1 + 4 + 1 + 2);
    let mut spec = BlockSpec::new("toy");
    spec.layers
        .insert("r2".into(), vec![BlockSize::Identity; 4]);
    assert_eq!(d.secure_graph(Some(&spec), 12).unwrap().0.drelus(), 4 * 64);
    spec.layers.insert("nope".into(), vec![]);
    assert!(d.secure_graph(Some(&spec), 12).is_err());
    assert!(d.summary().contains("slot r2"));
}

#[test]
fn asymmetric_padding_ceil_pooling_and_resize_lower_to_the_graph() {
    use crate::graph::{Op, ResizeMode as GraphResize};
    let mut d = NetDesc::new("toy", [1, 6, 6]).unwrap();
    let mut op = conv("c", 2, 3, 1, 0);
    if let DescOp::Conv { pads, .. } = &mut op {
        *pads = [0, 1, 1, 2];
    }
    let c = d.push("c", op, &[0]).unwrap();
    assert_eq!(d.nodes[c].shape, [2, 5, 7]);
    let pool = DescOp::MaxPool {
        kernel: [2, 2],
        stride: [2, 2],
        pads: [0; 4],
        ceil_mode: true,
    };
    let p = d.push("pool", pool, &[c]).unwrap();
    assert_eq!(d.nodes[p].shape, [2, 3, 4]);
    let avg = DescOp::AvgPool {
        kernel: [2, 2],
        stride: [2, 2],
        pads: [0, 1, 0, 0],
        ceil_mode: true,
        count_include_pad: false,
    };
    let a = d.push("avg", avg, &[p]).unwrap();
    assert_eq!(d.nodes[a].shape, [2, 2, 3]);
    let up = DescOp::Resize {
        height: 4,
        width: 6,
        mode: ResizeMode::Bilinear {
            align_corners: false,
        },
    };
    d.push("up", up, &[a]).unwrap();
    let (g, _) = d.secure_graph(None, 12).unwrap();
    let ops: Vec<&Op> = g.nodes.iter().map(|n| &n.op).collect();
    // The asymmetric part of the conv's padding is a pad node: [0, 1, 1, 2] = [0, 1, 0, 1]
    // in the conv and [0, 0, 1, 1] before it.
    assert_eq!(ops[1], &Op::Pad { pads: [0, 0, 1, 1] });
    assert_eq!(g.nodes[1].name, "c.pad");
    assert!(matches!(
        ops[2],
        Op::Conv2d {
            padding: [0, 1],
            ..
        }
    ));
    assert!(matches!(
        ops[3],
        Op::MaxPool {
            ceil_mode: true,
            pad_end: None,
            ..
        }
    ));
    assert!(matches!(
        ops[4],
        Op::AvgPool {
            padding: [0, 1],
            pad_end: Some([0, 0]),
            ceil_mode: true,
            count_include_pad: false,
            ..
        }
    ));
    assert_eq!(
        ops[5],
        &Op::Resize {
            height: 4,
            width: 6,
            mode: GraphResize::Bilinear {
                align_corners: false
            }
        }
    );
    assert_eq!(g.output_shape(), [2, 4, 6]);
    // A ceil mode that does not change the size is the floor-mode node.
    let mut d = NetDesc::new("toy", [1, 7, 7]).unwrap();
    let pool = DescOp::MaxPool {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [0; 4],
        ceil_mode: true,
    };
    d.push("pool", pool, &[0]).unwrap();
    let (g, _) = d.secure_graph(None, 12).unwrap();
    assert!(!g.nodes[1].op.needs_format_3(), "{:?}", g.nodes[1].op);
}

#[test]
fn a_pad_node_is_a_zero_padding_node_of_the_graph() {
    let mut d = NetDesc::new("toy", [2, 5, 4]).unwrap();
    let p = d
        .push("p", DescOp::Pad { pads: [1, 0, 2, 3] }, &[0])
        .unwrap();
    assert_eq!(d.nodes[p].shape, [2, 8, 7]);
    assert!(d.summary().contains("pads [1, 0, 2, 3]"));
    let (g, _) = d.secure_graph(None, 12).unwrap();
    assert_eq!(g.nodes[1].op, crate::graph::Op::Pad { pads: [1, 0, 2, 3] });
    assert_eq!(g.output_shape(), [2, 8, 7]);
    let big = DescOp::Pad {
        pads: [u32::MAX, 0, 0, 0],
    };
    assert!(d.push("q", big, &[p]).is_err());
}

#[test]
fn unsupported_secure_forms_are_named() {
    let mut d = NetDesc::new("toy", [2, 6, 6]).unwrap();
    d.push("flat", DescOp::Flatten, &[0]).unwrap();
    let err = d.secure_graph(None, 12).unwrap_err().to_string();
    assert!(err.contains("\"flat\""), "{err}");
    assert!(err.contains("larger than 1x1"), "{err}");
    assert!(NetDesc::new("x", [0, 1, 1]).is_err());
    assert!(d.push("g", conv("g", 3, 1, 1, 0), &[7]).is_err());
}
