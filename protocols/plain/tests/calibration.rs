//! Calibration of approximate-DReLU windows on a small network (DESIGN §5, digest §6.12):
//! the windows chosen from the compared values that the plain oracle records cover those
//! values, so that the calibrated emulation decides every one of them as the exact DReLU does;
//! and a window narrower than the values is reported by the guard rail, naming the site, and
//! does change the network's output.

use knapsec_core::block::BlockSize;
use knapsec_core::drelu::{
    Calibration, CalibrationTarget, DreluChoice, DreluWindow, SiteCalibration, SiteStats,
    choose_window,
};
use knapsec_core::graph::{ModelWeights, OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use knapsec_plain::{DreluEmulation, evaluate, evaluate_with};

const F: u32 = 12;

/// conv → block ReLU (mixed patches) → conv → ReLU6 → max pool → conv → ReLU → global pool →
/// linear: every kind of DReLU site.
fn network() -> (SecureModel, ModelWeights) {
    let mut g = GraphBuilder::new("calibration-test", F, [3, 12, 12]);
    let c1 = g
        .conv("conv1", g.input(), ConvSpec::square(6, 3, 1, 1), None)
        .unwrap();
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 2 },
        BlockSize::Patch { h: 3, w: 2 },
        BlockSize::RELU,
        BlockSize::Identity,
        BlockSize::Patch { h: 4, w: 4 },
    ];
    let r1 = g.block_relu("relu1", c1, blocks).unwrap();
    let c2 = g
        .conv("conv2", r1, ConvSpec::square(8, 3, 1, 1), None)
        .unwrap();
    let r2 = g.relu6("relu2", c2).unwrap();
    let p = g.max_pool("pool", r2, [3, 3], [2, 2], [1, 1]).unwrap();
    let c3 = g
        .conv("conv3", p, ConvSpec::square(8, 3, 1, 1), None)
        .unwrap();
    let r3 = g.block_relu("relu3", c3, vec![BlockSize::RELU; 8]).unwrap();
    let gp = g.global_avg_pool("gap", r3).unwrap();
    g.linear("fc", gp, 5, true).unwrap();
    let (m, _) = g.finish(OutputKind::Classification).unwrap();
    let w = random_weights(&m, 11);
    (m, w)
}

/// Image `i`: values in ±`scale` from a seeded stream.
fn image(model: &SecureModel, i: u64, scale: f32) -> Vec<f32> {
    let [c, h, w] = model.input_shape();
    let mut prg = knapsec_ring::Prg::with_stream(&[5; 32], "calibration-test", i);
    (0..c * h * w)
        .map(|_| ((prg.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// The compared values of every site over `images` (exact DReLUs).
fn observe(model: &SecureModel, w: &ModelWeights, images: &[Vec<f32>]) -> Vec<SiteStats> {
    let mut stats = vec![SiteStats::default(); model.nodes.len()];
    for x in images {
        evaluate_with(model, w, x, &DreluEmulation::default(), Some(&mut stats)).unwrap();
    }
    stats
}

fn calibrate(model: &mut SecureModel, stats: &[SiteStats], target: CalibrationTarget) {
    let sites = model
        .drelu_sites()
        .into_iter()
        .map(|(i, kind)| SiteCalibration {
            node: i as u32,
            name: model.nodes[i].name.clone(),
            kind,
            window: choose_window(&stats[i], &target),
            stats: stats[i].clone().trimmed(),
        })
        .collect();
    model.calibration = Some(Calibration {
        data: "test images".into(),
        samples: 8,
        target,
        sites,
    });
    model.validate().unwrap();
}

#[test]
fn calibrated_windows_cover_the_values_they_were_chosen_from() {
    let (mut model, w) = network();
    // Inputs up to ±8: compared values far beyond what 16 bits at t = 0 hold.
    let images: Vec<Vec<f32>> = (0..8).map(|i| image(&model, i, 8.0)).collect();
    let stats = observe(&model, &w, &images);
    let sites = model.drelu_sites();
    assert_eq!(sites.len(), 4, "block ReLU, ReLU6, max pool, ReLU");
    // No value in the band the ignored bits decide: every decision must be the exact one.
    let target = CalibrationTarget {
        margin_bits: 1,
        target_error: 0.0,
        max_bits: 64,
    };
    calibrate(&mut model, &stats, target);
    let cal = model.calibration.clone().unwrap();
    for s in &cal.sites {
        assert!(s.stats.count > 0, "{}: nothing observed", s.name);
        assert!(!s.window.is_exact(), "{}: no window chosen", s.name);
        // The window holds the largest magnitude with the margin, and one bit fewer would not.
        let need = s.stats.max_abs << target.margin_bits;
        assert!(s.window.max_covered() >= need, "{}: {}", s.name, s.window);
        let fewer = DreluWindow {
            bits: s.window.bits - 1,
            lsb_ignored: s.window.lsb_ignored,
        };
        assert!(
            fewer.max_covered() < need,
            "{}: {} is not the fewest",
            s.name,
            s.window
        );
        assert_eq!(s.stats.at_risk(s.window.lsb_ignored), 0, "{}", s.name);
    }
    assert!(cal.mean_bits() < 40.0, "mean k {}", cal.mean_bits());
    // A few low bits are ignored somewhere (the values are large, their low bits noise).
    assert!(cal.sites.iter().any(|s| s.window.lsb_ignored > 0));
    assert!(DreluChoice::Calibrated.check(&model).is_empty());
    // On the calibration images the calibrated emulation decides every comparison as the
    // exact DReLU does, whatever the mask: outputs equal bit for bit.
    for (i, x) in images.iter().enumerate() {
        let exact = evaluate(&model, &w, x).unwrap();
        for seed in [1, 2] {
            let emu = DreluEmulation {
                choice: DreluChoice::Calibrated,
                seed,
            };
            let got = evaluate_with(&model, &w, x, &emu, None).unwrap();
            assert_eq!(got.fixed, exact.fixed, "image {i}, seed {seed}");
        }
    }
}

#[test]
fn a_window_too_narrow_for_the_data_is_warned_about_and_wraps() {
    let (mut model, w) = network();
    let images: Vec<Vec<f32>> = (0..8).map(|i| image(&model, i, 8.0)).collect();
    let stats = observe(&model, &w, &images);
    calibrate(&mut model, &stats, CalibrationTarget::default());
    assert!(
        DreluChoice::Calibrated
            .check(&model)
            .iter()
            .all(|w| !w.too_narrow)
    );
    // approx:12,0 covers |value| < 0.5 at 12 fractional bits; the values reach several units.
    let narrow = DreluWindow {
        bits: 12,
        lsb_ignored: 0,
    };
    let warnings = DreluChoice::Uniform(narrow).check(&model);
    let names: Vec<&str> = warnings
        .iter()
        .filter(|w| w.too_narrow)
        .map(|w| w.name.as_str())
        .collect();
    assert!(
        names.contains(&"relu1") && names.contains(&"relu2"),
        "{names:?}"
    );
    let text = warnings[0].describe(F);
    assert!(
        text.contains(&warnings[0].name) && text.contains("approx:12,0"),
        "{text}"
    );
    assert!(text.contains("calibration saw values up to"), "{text}");
    // What the warning is about is real: the signs wrap and the output changes.
    let emu = DreluEmulation {
        choice: DreluChoice::Uniform(narrow),
        seed: 1,
    };
    let changed = images
        .iter()
        .filter(|x| {
            evaluate_with(&model, &w, x, &emu, None).unwrap().fixed
                != evaluate(&model, &w, x).unwrap().fixed
        })
        .count();
    assert_eq!(changed, images.len());
    // The exact mode is never warned about.
    assert!(DreluChoice::Exact.check(&model).is_empty());
}
