//! Training and fine-tuning (knapsec-nn's trainer) on a tiny set: the loss goes down, a
//! checkpointed run resumes after its last epoch, and a block spec's block ReLUs train too.
#![cfg(feature = "torch")]

use knapsec_arch_resnet as _;
use knapsec_core::{ArchOptions, BlockSize, BlockSpec};
use knapsec_nn::Network;
use knapsec_nn::data::{ImageSet, Pixels};
use knapsec_nn::train::{Schedule, TrainConfig, evaluate, train};
use knapsec_nn::weights::reinit_seeded;

fn options() -> ArchOptions {
    ArchOptions {
        input_channels: Some(1),
        input_height: Some(8),
        input_width: Some(8),
        classes: Some(4),
        base_width: Some(4),
        variant: None,
    }
}

/// 32 images of 4 classes, each class a bright quadrant.
fn tiny_set() -> ImageSet {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..32usize {
        let label = i % 4;
        for y in 0..8 {
            for x in 0..8 {
                let on = (y / 4) * 2 + x / 4 == label;
                pixels.push(if on {
                    220u8
                } else {
                    ((i * 13 + y * 5 + x * 3) % 50) as u8
                });
            }
        }
        labels.push(label as i64);
    }
    ImageSet {
        pixels: Pixels::U8(pixels),
        labels,
        shape: (1, 8, 8),
        classes: 4,
        mean: vec![0.3],
        std: vec![0.3],
    }
}

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        lr: 0.02,
        warmup_epochs: 0.0,
        schedule: Schedule::Constant,
        ..Default::default()
    }
}

#[test]
fn training_reduces_the_loss() {
    let mut net = Network::build("resnet18-cifar", &options(), tch::Device::Cpu).unwrap();
    reinit_seeded(&net.vs, 3);
    let set = tiny_set();
    let history = train(&mut net, &set, None, &config(8), None).unwrap();
    assert_eq!(history.len(), 8);
    let (first, last) = (history[0].train_loss, history.last().unwrap().train_loss);
    assert!(
        last < first * 0.7,
        "training loss {first} -> {last}: {history:?}"
    );
    assert!(evaluate(&net, &set, 32).unwrap().loss.is_finite());
}

#[test]
fn checkpointed_training_resumes_after_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Network::build("resnet18-cifar", &options(), tch::Device::Cpu).unwrap();
    reinit_seeded(&net.vs, 5);
    let set = tiny_set();
    let first = train(&mut net, &set, None, &config(2), Some(dir.path())).unwrap();
    assert_eq!(first.len(), 2);
    // A fresh network resumes from the checkpoint: two epochs are not run again.
    let mut resumed = Network::build("resnet18-cifar", &options(), tch::Device::Cpu).unwrap();
    reinit_seeded(&resumed.vs, 99);
    let history = train(&mut resumed, &set, None, &config(3), Some(dir.path())).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(&history[..2], &first[..]);
    // Running again with the same length finds every epoch done.
    let again = train(&mut resumed, &set, None, &config(3), Some(dir.path())).unwrap();
    assert_eq!(again.len(), 3, "nothing left to do");
}

#[test]
fn fine_tuning_with_block_relus_in_place() {
    let mut net = Network::build("resnet18-cifar", &options(), tch::Device::Cpu).unwrap();
    reinit_seeded(&net.vs, 7);
    let table = net.net.slots().layer_table().unwrap();
    let mut spec = BlockSpec::uniform(&table, BlockSize::Patch { h: 2, w: 2 });
    spec.layers.get_mut("stem").unwrap()[0] = BlockSize::Identity;
    net.net.apply_spec(&spec).unwrap();
    let set = tiny_set();
    let history = train(&mut net, &set, None, &config(8), None).unwrap();
    let (first, last) = (history[0].train_loss, history.last().unwrap().train_loss);
    assert!(
        last < first,
        "training loss with block ReLUs {first} -> {last}"
    );
}
