//! The example architecture (`archs/example-tinycnn`) is registered only through this facade
//! (feature `example-arch`, part of `archs`): it appears in the registry, and with `torch` its
//! network builds by name, runs, and exports to a secure model that computes the same logits.

#![cfg(feature = "example-arch")]

use knapsec_core::ArchOptions;
use knapsec_core::registry::PluginSource;

#[test]
fn example_arch_is_in_the_registry() {
    let registry = knapsec_builtin::registry().unwrap();
    let arch = registry
        .arch("example-tinycnn")
        .expect("example-tinycnn is registered");
    let table = arch.layer_table(&ArchOptions::default()).unwrap();
    assert_eq!(
        table
            .layers
            .iter()
            .map(|l| l.name.as_str())
            .collect::<Vec<_>>(),
        ["relu1", "relu2"]
    );
    assert_eq!(table.drelus(), 8 * 28 * 28 + 16 * 14 * 14);
    let info = registry
        .list()
        .into_iter()
        .find(|p| p.name == "example-tinycnn")
        .unwrap();
    assert_eq!(
        info.source,
        PluginSource::Builtin("knapsec-arch-example".into())
    );
}

#[cfg(feature = "torch")]
#[test]
fn example_network_builds_by_name_runs_and_exports() {
    use knapsec_core::{BlockSize, BlockSpec};
    use knapsec_nn::net::{Network, net_names};
    use knapsec_nn::tch::{Device, Kind};

    assert!(net_names().contains(&"example-tinycnn"));
    let mut network =
        Network::build("example-tinycnn", &ArchOptions::default(), Device::Cpu).unwrap();
    let x = knapsec_nn::random::randn(
        &mut knapsec_nn::random::seeded(1),
        &[4, 1, 28, 28],
        (Kind::Float, Device::Cpu),
    );
    let y = network.net.forward_t(&x, false).unwrap();
    assert_eq!(y.size(), [4, 10]);
    let mut spec = BlockSpec::new("example-tinycnn");
    spec.layers
        .insert("relu2".into(), vec![BlockSize::Patch { h: 2, w: 2 }; 16]);
    network.net.apply_spec(&spec).unwrap();
    let y = network.net.forward_t(&x, false).unwrap();
    let (model, weights) = network.export(20).unwrap();
    assert_eq!(model.drelus(), 8 * 28 * 28 + 16 * 7 * 7);
    let z = knapsec_nn::export::eval_graph(&model, &weights, &x)
        .unwrap()
        .view([4, 10])
        .to_kind(Kind::Float);
    let diff = f64::try_from((&z - &y).abs().max()).unwrap();
    assert!(diff < 1e-3, "the exported example differs by {diff}");
}
