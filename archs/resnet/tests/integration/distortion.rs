//! Distortion extraction on a small resnet18-cifar (digest §2): the engine, which starts each
//! pass at the convolution that reads the layer's slot through
//! `ResNet::forward_after_channel_change` (one-channel updates of inner convolutions and of the
//! next unit's first convolution and downsampling shortcut, the head in the last block), gives
//! the same table as the reference's one-variant-per-pass schedule from each layer's block.
#![cfg(feature = "torch")]

use knapsec_arch_resnet::{RESNET18_CIFAR, ResNet18Cifar};
use knapsec_core::distortion::{DistortionTable, Provenance};
use knapsec_core::{ArchAdapter, ArchOptions};
use knapsec_nn::Network;
use knapsec_nn::distortion::{self as engine, ExtractConfig, OutputMse, Schedule, sample, store};
use knapsec_nn::random;
use knapsec_nn::tch::{Device, Kind};
use std::sync::Arc;

#[test]
fn engine_equals_reference_schedule_on_resnet18() {
    let options = ArchOptions {
        input_height: Some(8),
        input_width: Some(8),
        base_width: Some(4),
        classes: Some(5),
        ..Default::default()
    };
    let mut net = Network::build(RESNET18_CIFAR, &options, Device::Cpu).unwrap();
    // f64, so that the two schedules agree far below the tolerance; seeded weights with
    // non-trivial BN statistics.
    net.vs.set_kind(Kind::Double);
    knapsec_nn::weights::reinit_seeded(&net.vs, 3);
    let mut rng = random::seeded(3);
    knapsec_nn::tch::no_grad(|| {
        let variables: std::collections::BTreeMap<_, _> = net.vs.variables().into_iter().collect();
        for (name, mut t) in variables {
            let range = if name.ends_with("running_var") {
                (0.5, 2.0)
            } else if name.ends_with("running_mean") || name.ends_with("bn1.bias") {
                (-0.3, 0.3)
            } else {
                continue;
            };
            let fresh = random::uniform(
                &mut rng,
                &t.size(),
                range.0,
                range.1,
                (t.kind(), t.device()),
            );
            t.copy_(&fresh);
        }
    });
    let layers = ResNet18Cifar.layer_table(&options).unwrap();
    let prov = Provenance {
        weights_hash: sample::weights_hash(&net.vs),
        sample_seed: 1,
        sample_count: 3,
        metric: "output-mse".into(),
    };
    let skeleton = DistortionTable::unmeasured(&layers, |l| ResNet18Cifar.candidates(l), prov);
    let images = sample::random_images([3, 8, 8], 3, 1).to_kind(Kind::Double);
    let units = store::units(&skeleton, 4);
    let run = |schedule: Schedule, workers: usize| {
        let nets = engine::into_nets(engine::replicas(&net, workers).unwrap());
        let config = ExtractConfig {
            schedule,
            batch: 2,
            ..ExtractConfig::default()
        };
        engine::extract(
            nets,
            &images,
            skeleton.clone(),
            &units,
            Arc::new(OutputMse),
            &config,
            &mut |_| {},
        )
        .unwrap()
    };
    let (reference, _) = run(Schedule::Single, 1);
    let (batched, stats) = run(Schedule::DEFAULT, 2);
    batched.validate(&layers).unwrap();
    assert!(
        stats.evaluated < stats.cells,
        "(1,1) at least is copied: {stats:?}"
    );
    let mut nonzero = 0;
    for ((name, a), b) in reference.layers.iter().zip(batched.layers.values()) {
        for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
            assert!(
                (x - y).abs() <= 1e-6 * x.abs().max(y.abs()) + 1e-15,
                "{name} channel {} candidate {}: {x} vs {y}",
                i / a.k(),
                a.candidates[i % a.k()]
            );
            nonzero += usize::from(*x > 0.0);
        }
    }
    assert!(
        nonzero > reference.layers.len(),
        "too few non-zero distortions: {nonzero}"
    );
}
