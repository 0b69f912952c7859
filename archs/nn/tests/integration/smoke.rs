//! Proves that libtorch links and runs: a small convolution, backward pass and thread count.

use tch::{Device, Kind, Tensor, nn, nn::ModuleT};

#[test]
fn libtorch_links_and_computes() {
    let vs = nn::VarStore::new(Device::Cpu);
    let conv = nn::conv2d(
        vs.root() / "conv",
        2,
        3,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    );
    let x = Tensor::ones([1, 2, 5, 5], (Kind::Float, Device::Cpu));
    let y = conv.forward_t(&x, false);
    assert_eq!(y.size(), vec![1, 3, 5, 5]);
    y.sum(Kind::Float).backward();
    let g = vs.trainable_variables()[0].grad();
    assert!(g.defined() && f64::try_from(g.abs().sum(Kind::Double)).unwrap() > 0.0);
    assert!(tch::get_num_threads() >= 1);
    let v = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).relu();
    assert_eq!(Vec::<f32>::try_from(v).unwrap(), vec![1.0, 0.0, 3.0]);
}
