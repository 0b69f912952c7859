//! The securenn executor refuses, when it plans a model (every party does so on loading it,
//! before any message), what the shared secure-model validator refuses: too many fractional
//! bits, and shapes that disagree with the ops.

use knapsec_securenn::{Options, Plan, nets};

#[test]
fn plan_refuses_too_many_fractional_bits() {
    let mut model = nets::resnet18_cifar(4, 10, None).unwrap();
    Plan::new(&model, Options::default()).unwrap();
    model.frac_bits = knapsec_core::graph::MAX_FRAC_BITS + 1;
    let e = Plan::new(&model, Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fractional bits"), "{e}");
}

#[test]
fn plan_refuses_a_shape_the_ops_do_not_produce() {
    let mut model = nets::resnet18_cifar(4, 10, None).unwrap();
    let i = model
        .nodes
        .iter()
        .position(|n| {
            matches!(
                n.op,
                knapsec_core::graph::Op::MaxPool { .. } | knapsec_core::graph::Op::Conv2d { .. }
            )
        })
        .unwrap();
    model.nodes[i].shape[1] += 1;
    let e = Plan::new(&model, Options::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("inferred"), "{e}");
}
