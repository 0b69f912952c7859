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
fn unsupported_secure_forms_are_named() {
    let mut d = NetDesc::new("toy", [1, 6, 6]).unwrap();
    let mut op = conv("c", 2, 3, 1, 0);
    if let DescOp::Conv { pads, .. } = &mut op {
        *pads = [0, 0, 1, 1];
    }
    let c = d.push("c", op, &[0]).unwrap();
    assert_eq!(d.nodes[c].shape, [2, 5, 5]);
    let err = d.secure_graph(None, 12).unwrap_err().to_string();
    assert!(err.contains("asymmetric"), "{err}");
    assert!(NetDesc::new("x", [0, 1, 1]).is_err());
    let mut d = NetDesc::new("toy", [1, 8, 8]).unwrap();
    let pool = DescOp::MaxPool {
        kernel: [3, 3],
        stride: [2, 2],
        pads: [0; 4],
        ceil_mode: true,
    };
    let p = d.push("pool", pool, &[0]).unwrap();
    assert_eq!(d.nodes[p].shape, [1, 4, 4]);
    let err = d.secure_graph(None, 12).unwrap_err().to_string();
    assert!(err.contains("ceil-mode"), "{err}");
    assert!(d.push("g", conv("g", 3, 1, 1, 0), &[7]).is_err());
}
