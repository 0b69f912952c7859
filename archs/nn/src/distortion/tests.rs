//! Engine tests on a small residual network (three blocks, four slots, two map sizes).

use super::store::{self, RunInfo, Shard};
use super::*;
use crate::error::NnError;
use crate::net::{BlockNet, BlockNetParts, Network};
use crate::slots::{SlotId, SlotKind, Slots};
use knapsec_core::distortion::{DistortionTable, Provenance};
use knapsec_core::{ArchOptions, BlockSize, ReluLayer};
use std::sync::Arc;
use tch::nn::{self, ModuleT};
use tch::{Device, Kind, Tensor};

/// `stem`: conv 1→4, BN, slot `stem` (4×8×8). `res`: conv, slot `res_1`, conv, + input, slot
/// `res_2`. `head`: 2×2 average pool, conv 4→6, slot `head` (6×4×4), mean, linear 6→3.
/// With option variant `"hook"` it overrides `run_block_after_slot` for the `res` block.
#[derive(Debug)]
struct Toy {
    parts: BlockNetParts,
    stem: nn::Conv2D,
    bn: nn::BatchNorm,
    c1: nn::Conv2D,
    c2: nn::Conv2D,
    head: nn::Conv2D,
    fc: nn::Linear,
    ids: [SlotId; 4],
    hook: bool,
}

fn conv(p: &nn::Path, name: &str, i: i64, o: i64) -> nn::Conv2D {
    nn::conv2d(
        p / name,
        i,
        o,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    )
}

fn build_toy(options: &ArchOptions, p: &nn::Path) -> crate::Result<Box<dyn BlockNet>> {
    let mut slots = Slots::new("toy");
    let ids = [
        slots.add(ReluLayer::new("stem", 4, 8, 8), 0, SlotKind::Relu)?,
        slots.add(ReluLayer::new("res_1", 4, 8, 8), 1, SlotKind::Relu)?,
        slots.add(ReluLayer::new("res_2", 4, 8, 8), 1, SlotKind::Relu)?,
        slots.add(ReluLayer::new("head", 6, 4, 4), 2, SlotKind::Relu)?,
    ];
    Ok(Box::new(Toy {
        parts: BlockNetParts::new(
            "toy",
            options.clone(),
            [1, 8, 8],
            vec!["stem".into(), "res".into(), "head".into()],
            slots,
            None,
        ),
        stem: conv(p, "stem", 1, 4),
        bn: nn::batch_norm2d(p / "bn", 4, Default::default()),
        c1: conv(p, "c1", 4, 4),
        c2: conv(p, "c2", 4, 4),
        head: conv(p, "head", 4, 6),
        fc: nn::linear(p / "fc", 6, 3, Default::default()),
        ids,
        hook: options.variant.as_deref() == Some("hook"),
    }))
}

impl Toy {
    fn finish_head(&self, x: &Tensor) -> Tensor {
        x.mean_dim([2i64, 3].as_slice(), false, x.kind())
            .apply(&self.fc)
    }
}

impl BlockNet for Toy {
    crate::block_net_parts!(parts);

    fn run_block(&self, index: usize, x: &Tensor, train: bool) -> Tensor {
        match index {
            0 => self
                .parts
                .slots
                .run(self.ids[0], &self.bn.forward_t(&x.apply(&self.stem), train)),
            1 => {
                let y = self.parts.slots.run(self.ids[1], &x.apply(&self.c1));
                self.parts.slots.run(self.ids[2], &(y.apply(&self.c2) + x))
            }
            _ => {
                let y = x
                    .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)
                    .apply(&self.head);
                self.finish_head(&self.parts.slots.run(self.ids[3], &y))
            }
        }
    }
    fn run_block_after_slot(
        &self,
        index: usize,
        slot: SlotId,
        act: &Tensor,
        input: &Tensor,
        train: bool,
    ) -> crate::Result<Tensor> {
        if !self.hook || index != 1 {
            return crate::net::run_block_injected(self, index, slot, act, input, train);
        }
        if slot == self.ids[2] {
            return Ok(act.shallow_clone());
        }
        let y = act.apply(&self.c2);
        let v = crate::net::stacked_variants("toy", &y, input)?;
        let sum = y.view([v, input.size()[0], 4, 8, 8]) + input.unsqueeze(0);
        Ok(self.parts.slots.run(self.ids[2], &sum.view([-1, 4, 8, 8])))
    }
}

/// The toy network in `f64` (so that two schedules agree far below the tested 1e-6), with stem
/// channel 0 always positive and stem channel 1 always negative.
fn toy(hook: bool) -> Network {
    let options = ArchOptions {
        variant: hook.then(|| "hook".to_string()),
        ..Default::default()
    };
    let mut net = Network::build_with(build_toy, &options, Device::Cpu).unwrap();
    net.vs.set_kind(Kind::Double);
    crate::weights::reinit_seeded(&net.vs, 11);
    let vars = net.vs.variables();
    tch::no_grad(|| {
        let _ = vars["bn.bias"].get(0).fill_(100.0);
        let _ = vars["bn.bias"].get(1).fill_(-100.0);
    });
    net
}

/// The toy network in `f32` with seeded weights (3 outputs, `1 × 8 × 8` input), for other
/// modules' tests.
pub(crate) fn toy_network() -> Network {
    let net = Network::build_with(build_toy, &ArchOptions::default(), Device::Cpu).unwrap();
    crate::weights::reinit_seeded(&net.vs, 11);
    net
}

fn candidates() -> Vec<BlockSize> {
    let p = |h, w| BlockSize::Patch { h, w };
    // 8x8 and 16x16 clamp to the same patch on the 4×4 head map (and 16x16 on every map).
    vec![
        BlockSize::RELU,
        p(2, 2),
        p(1, 3),
        p(2, 4),
        p(8, 8),
        p(16, 16),
        BlockSize::Identity,
    ]
}

fn skeleton(net: &Network) -> DistortionTable {
    let prov = Provenance {
        weights_hash: sample::weights_hash(&net.vs),
        sample_seed: 5,
        sample_count: 6,
        metric: "output-mse".into(),
    };
    DistortionTable::unmeasured(
        &net.net.slots().layer_table().unwrap(),
        |_| candidates(),
        prov,
    )
}

fn images() -> Tensor {
    sample::random_images([1, 8, 8], 6, 5).to_kind(Kind::Double)
}

struct Run {
    schedule: Schedule,
    workers: usize,
    hook: bool,
    shard: Shard,
    stop_after: Option<usize>,
    checkpoint: Option<std::path::PathBuf>,
}

impl Default for Run {
    fn default() -> Self {
        Run {
            schedule: Schedule::DEFAULT,
            workers: 2,
            hook: true,
            shard: Shard::WHOLE,
            stop_after: None,
            checkpoint: None,
        }
    }
}

fn run_from(r: &Run, table: DistortionTable) -> crate::Result<(DistortionTable, ExtractStats)> {
    let net = toy(r.hook);
    let nets = into_nets(replicas_with(&net, build_toy, r.workers).unwrap());
    let all = store::units(&table, 3);
    let units: Vec<WorkUnit> = all.into_iter().filter(|u| r.shard.owns(u.id)).collect();
    let run = RunInfo {
        data: "random".into(),
        chunk: 3,
        shard: Some(r.shard),
    };
    let config = ExtractConfig {
        schedule: r.schedule,
        batch: 4,
        threads_per_worker: 1,
        checkpoint: r.checkpoint.clone().map(|p| (p, run)),
        checkpoint_every: std::time::Duration::ZERO,
        stop_after_units: r.stop_after,
    };
    extract(
        nets,
        &images(),
        table,
        &units,
        Arc::new(OutputMse),
        &config,
        &mut |_| {},
    )
}

fn run(r: &Run) -> crate::Result<(DistortionTable, ExtractStats)> {
    run_from(r, skeleton(&toy(r.hook)))
}

fn column(t: &DistortionTable, layer: &str, b: BlockSize) -> Vec<f64> {
    let d = t.layer(layer).unwrap();
    let q = d.candidates.iter().position(|x| *x == b).unwrap();
    (0..d.channels).map(|c| d.row(c)[q]).collect()
}

#[test]
fn relu_candidate_is_exactly_zero_and_positive_channel_identity_is_zero() {
    for schedule in [Schedule::DEFAULT, Schedule::Single] {
        let (t, _) = run(&Run {
            schedule,
            ..Run::default()
        })
        .unwrap();
        t.validate(&toy(true).net.slots().layer_table().unwrap())
            .unwrap();
        for layer in ["stem", "res_1", "res_2", "head"] {
            assert!(
                column(&t, layer, BlockSize::RELU).iter().all(|&v| v == 0.0),
                "{schedule:?} {layer}"
            );
        }
        let identity = column(&t, "stem", BlockSize::Identity);
        assert_eq!(
            identity[0], 0.0,
            "{schedule:?}: stem channel 0 is always positive"
        );
        assert!(
            identity[1] > 0.0 && identity[2] > 0.0,
            "{schedule:?}: {identity:?}"
        );
        // The dead channel 1: every patch gives the ReLU's zeros.
        let d = t.layer("stem").unwrap();
        assert!(d.row(1)[..6].iter().all(|&v| v == 0.0), "{:?}", d.row(1));
        assert!(d.values.iter().any(|&v| v > 0.0));
    }
}

fn assert_close(a: &DistortionTable, b: &DistortionTable, rel: f64) {
    assert_eq!(store::incompatibility(a, b), None);
    for ((name, x), y) in a.layers.iter().zip(b.layers.values()) {
        let scale = x
            .values
            .iter()
            .chain(&y.values)
            .fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (p, q)) in x.values.iter().zip(&y.values).enumerate() {
            assert!(
                (p - q).abs() <= rel * p.abs().max(q.abs()) + 1e-12 * scale,
                "{name} cell {i}: {p} vs {q} (candidate {})",
                x.candidates[i % x.k()]
            );
        }
    }
}

#[test]
fn batched_engine_equals_one_variant_schedule() {
    let (reference, single) = run(&Run {
        schedule: Schedule::Single,
        workers: 1,
        ..Run::default()
    })
    .unwrap();
    assert_eq!(single.evaluated, single.cells);
    for hook in [true, false] {
        for workers in [1, 2] {
            let (t, stats) = run(&Run {
                hook,
                workers,
                ..Run::default()
            })
            .unwrap();
            assert_close(&t, &reference, 1e-6);
            assert!(
                stats.evaluated < stats.cells,
                "nothing was skipped: {stats:?}"
            );
            // Rows are skipped image by image, beyond the variants skipped on every image.
            assert_eq!(stats.image_rows, single.image_rows);
            assert!(
                stats.image_rows_run < stats.evaluated * stats.image_rows / stats.cells,
                "no row of a variant that runs was skipped: {stats:?}"
            );
            assert!(stats.passes < single.passes);
        }
    }
    // Without skipping, several variants per pass, and one variant per pass.
    for (pass_pixels, max_variants) in [(1 << 20, 64), (1, 1)] {
        let schedule = Schedule::Batched {
            pass_pixels,
            max_variants,
            dedupe: false,
        };
        let (t, stats) = run(&Run {
            schedule,
            ..Run::default()
        })
        .unwrap();
        assert_eq!(stats.evaluated, stats.cells);
        assert_close(&t, &reference, 1e-6);
    }
}

#[test]
fn three_shards_merged_equal_one_run() {
    let (whole, _) = run(&Run::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut parts = Vec::new();
    for i in 0..3 {
        let shard = Shard { index: i, count: 3 };
        let (t, _) = run(&Run {
            shard,
            ..Run::default()
        })
        .unwrap();
        assert!(
            t.validate(&toy(true).net.slots().layer_table().unwrap())
                .is_err(),
            "a shard is partial"
        );
        let path = dir.path().join(format!("part{i}.safetensors"));
        store::save(
            &path,
            &t,
            &RunInfo {
                data: "random".into(),
                chunk: 3,
                shard: Some(shard),
            },
        )
        .unwrap();
        let (t, r) = store::load(&path).unwrap();
        parts.push((path, t, r));
    }
    let (merged, _) = store::merge(&parts).unwrap();
    assert_close(&merged, &whole, 1e-12);
}

#[test]
fn interrupted_run_resumes_to_the_same_table() {
    let (whole, full_stats) = run(&Run::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("t.safetensors.partial");
    let r = Run {
        checkpoint: Some(ckpt.clone()),
        stop_after: Some(2),
        ..Run::default()
    };
    match run(&r) {
        Err(NnError::Interrupted { units: 2 }) => {}
        other => panic!(
            "expected an interruption after 2 units, got {:?}",
            other.map(|x| x.1)
        ),
    }
    let (partial, info) = store::load(&ckpt).unwrap();
    assert_eq!(info.unwrap().chunk, 3);
    let units = store::units(&partial, 3);
    assert_eq!(
        units
            .iter()
            .filter(|u| store::unit_done(&partial, u))
            .count(),
        2
    );
    // Resume: only the remaining units run.
    let r = Run {
        checkpoint: Some(ckpt.clone()),
        ..Run::default()
    };
    let (resumed, stats) = run_from(&r, partial).unwrap();
    assert_eq!(stats.units, units.len() - 2);
    assert!(stats.cells < full_stats.cells);
    assert_close(&resumed, &whole, 1e-12);
}

#[test]
fn bad_inputs_are_refused() {
    let net = toy(true);
    let mut t = skeleton(&net);
    t.layers.get_mut("stem").unwrap().channels = 5;
    let units = store::units(&t, 3);
    let e = extract(
        into_nets(replicas_with(&net, build_toy, 1).unwrap()),
        &images(),
        t,
        &units,
        Arc::new(OutputMse),
        &ExtractConfig::default(),
        &mut |_| {},
    );
    assert!(matches!(e, Err(NnError::WrongChannelCount { .. })));
    let t = skeleton(&net);
    let units = store::units(&t, 3);
    let e = extract(
        into_nets(replicas_with(&net, build_toy, 1).unwrap()),
        &Tensor::zeros([2, 3, 8, 8], (Kind::Double, Device::Cpu)),
        t,
        &units,
        Arc::new(OutputMse),
        &ExtractConfig::default(),
        &mut |_| {},
    );
    assert!(matches!(e, Err(NnError::BadInput { .. })), "{e:?}");
    assert!(parse_device("tpu").is_err());
    assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
}

/// The rows of a channel change through a convolution, as the engine's ResNet passes run them
/// (clean product plus the changed channel's contribution), equal the convolution of the
/// stacked rows.
#[test]
fn channel_change_convolution_equals_the_stacked_one() {
    let mut rng = crate::random::seeded(5);
    let opts = (Kind::Double, Device::Cpu);
    let clean = crate::random::randn(&mut rng, &[3, 4, 6, 6], opts);
    let weight = crate::random::randn(&mut rng, &[5, 4, 3, 3], opts);
    let images = Tensor::from_slice(&[2i64, 0, 0, 1, 2]);
    let channels = [1i64, 1, 3, 3, 0];
    let values = crate::random::randn(&mut rng, &[5, 1, 6, 6], opts);
    let change = crate::net::ChannelChange {
        clean: &clean,
        images: &images,
        channels: &channels,
        values: &values,
    };
    let stacked = change.stacked().unwrap();
    for r in 0..5 {
        let (img, ch) = (images.int64_value(&[r]), channels[r as usize]);
        let expected = clean
            .get(img)
            .index_copy(0, &Tensor::from_slice(&[ch]), &values.get(r));
        assert!(stacked.get(r).allclose(&expected, 0.0, 0.0, false));
    }
    for (stride, padding) in [([1, 1], [1, 1]), ([2, 2], [0, 0])] {
        let clean_out = clean.conv2d(&weight, None::<&Tensor>, stride, padding, [1, 1], 1);
        let fast = change.conv2d(&clean_out, &weight, stride, padding).unwrap();
        let direct = stacked.conv2d(&weight, None::<&Tensor>, stride, padding, [1, 1], 1);
        assert!(fast.allclose(&direct, 1e-12, 1e-12, false));
    }
    // Grouped (2 groups of 2 channels; depthwise: 4 groups, 2 filters each), dilated, and
    // asymmetrically padded convolutions: only the changed channel's group moves.
    let pad = |x: &Tensor, p: [i64; 4]| x.constant_pad_nd([p[1], p[3], p[0], p[2]]);
    for (groups, out, stride, pads, dilation) in [
        (2i64, 6i64, [1i64, 1i64], [1i64, 1, 1, 1], [1i64, 1]),
        (4, 8, [2, 2], [0, 0, 1, 1], [1, 1]),
        (4, 4, [1, 1], [2, 2, 2, 2], [2, 2]),
        (1, 5, [1, 2], [0, 1, 2, 0], [2, 1]),
    ] {
        let weight = crate::random::randn(&mut rng, &[out, 4 / groups, 3, 3], opts);
        let conv = |x: &Tensor| {
            pad(x, pads).conv2d(&weight, None::<&Tensor>, stride, [0, 0], dilation, groups)
        };
        let fast = change
            .conv2d_general(&conv(&clean), &weight, stride, pads, dilation, groups)
            .unwrap();
        let direct = conv(&stacked);
        assert!(
            fast.allclose(&direct, 1e-12, 1e-12, false),
            "groups {groups}, pads {pads:?}, dilation {dilation:?}"
        );
    }
}
