//! `knapsec calibrate` and the guard rails of approximate DReLUs (DESIGN §5) end to end on a
//! small secure model built here: calibration writes per-site windows into the model's public
//! part, `simulate` and `eval --model` warn about a window too narrow for the calibration data
//! (an error with `--strict`), and `eval --model` reports exact and calibrated side by side.

use crate::support::{Lcg, fails, knapsec, ok, p, write_images};
use knapsec_core::block::BlockSize;
use knapsec_core::graph::{OutputKind, SecureModel};
use knapsec_core::graph_build::{ConvSpec, GraphBuilder, random_weights};
use serde_json::Value;
use std::path::Path;

/// conv → ReLU with patches → conv → ReLU6 → max pool → global pool → linear, with random
/// weights, and `n` images in ±4 in each of `cal/` and `test/`.
fn setup(dir: &Path, n: u64) -> SecureModel {
    let mut g = GraphBuilder::new("calibrate-cli", 12, [2, 10, 10]);
    let c1 = g
        .conv("conv1", g.input(), ConvSpec::square(4, 3, 1, 1), None)
        .unwrap();
    let blocks = vec![
        BlockSize::RELU,
        BlockSize::Patch { h: 2, w: 2 },
        BlockSize::RELU,
        BlockSize::Patch { h: 3, w: 3 },
    ];
    let r1 = g.block_relu("relu1", c1, blocks).unwrap();
    let c2 = g
        .conv("conv2", r1, ConvSpec::square(6, 3, 1, 1), None)
        .unwrap();
    let r2 = g.relu6("relu2", c2).unwrap();
    let p = g.max_pool("pool", r2, [2, 2], [2, 2], [0, 0]).unwrap();
    let gp = g.global_avg_pool("gap", p).unwrap();
    g.linear("fc", gp, 3, true).unwrap();
    let (model, _) = g.finish(OutputKind::Classification).unwrap();
    let weights = random_weights(&model, 5);
    let m = dir.join("model");
    model.save(&m).unwrap();
    weights.save(&m).unwrap();
    let mut rng = Lcg(1);
    for part in ["cal", "test"] {
        write_images(&dir.join(part), n as usize, [2, 10, 10], &mut rng, 4.0);
    }
    model
}

#[test]
fn calibrate_writes_windows_and_the_guard_rails_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    setup(dir, 6);
    let model = dir.join("model");
    let cal_data = format!("npy:{}", p(&dir.join("cal")));
    let test_data = format!("npy:{}", p(&dir.join("test")));
    let before = std::fs::read_to_string(model.join("model.ron")).unwrap();

    // A cap that makes a window too narrow: refused with --strict, nothing written.
    let err = fails(&mut knapsec(&[
        "calibrate",
        "--model",
        p(&model),
        "--data",
        &cal_data,
        "--max-bits",
        "4",
        "--strict",
        "-o",
        p(&dir.join("capped")),
    ]));
    assert!(err.contains("too narrow") && err.contains("relu1"), "{err}");
    assert!(!dir.join("capped").exists());
    assert_eq!(
        std::fs::read_to_string(model.join("model.ron")).unwrap(),
        before
    );

    // Calibration in place: the windows go into the public part.
    let (stdout, stderr) = ok(&mut knapsec(&[
        "calibrate",
        "--model",
        p(&model),
        "--data",
        &cal_data,
        "--json",
    ]));
    assert!(!stderr.contains("warning"), "{stderr}");
    let s: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(s["samples"], 6);
    let sites = s["sites"].as_array().unwrap();
    let names: Vec<&str> = sites.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["relu1", "relu2", "pool"]);
    for r in sites {
        let (k, t) = (
            r["bits"].as_u64().unwrap(),
            r["lsb_ignored"].as_u64().unwrap(),
        );
        assert!(k < 64, "{r}");
        // The window (k − 1 value bits above t ignored ones, at 12 fractional bits) holds the
        // largest magnitude seen, with the default margin of 2 bits.
        let covered = ((1u64 << (k - 1 + t)) - (1u64 << t)) as f64 / 4096.0;
        assert!(covered >= 4.0 * r["max_abs"].as_f64().unwrap(), "{r}");
    }
    assert!(s["compare_bytes"].as_u64() < s["compare_bytes_exact"].as_u64());
    assert!(s["inference_bytes"].as_u64() < s["inference_bytes_exact"].as_u64());
    let calibrated = SecureModel::load(&model).unwrap();
    let cal = calibrated.calibration.as_ref().expect("windows written");
    assert_eq!(cal.sites.len(), 3);
    assert_eq!(cal.samples, 6);
    assert_ne!(
        calibrated.public_hash(),
        SecureModel::load(&model)
            .map(|mut m| {
                m.calibration = None;
                m.public_hash()
            })
            .unwrap()
    );

    // simulate: a window too narrow is warned about, naming the site and the observed range;
    // --strict refuses it; the calibrated windows pass silently.
    let input = dir.join("test/img000.npy");
    let sim = |drelu: &str, strict: bool| {
        let mut c = knapsec(&[
            "simulate",
            "--model",
            p(&model),
            "--input",
            p(&input),
            "--drelu",
            drelu,
            "--json",
        ]);
        if strict {
            c.arg("--strict");
        }
        c
    };
    let (_, stderr) = ok(&mut sim("approx:6,0", false));
    assert!(
        stderr.contains("warning: DReLU mode approx:6,0: DReLU site relu1")
            && stderr.contains("calibration saw values up to"),
        "{stderr}"
    );
    let err = fails(&mut sim("approx:6,0", true));
    assert!(
        err.contains("--strict") && err.contains("too narrow"),
        "{err}"
    );
    let (stdout, stderr) = ok(&mut sim("calibrated", true));
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(stdout.contains("Logits"), "{stdout}");

    // eval --model: exact and calibrated side by side (the default for a calibrated model).
    let (stdout, _) = ok(&mut knapsec(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        &test_data,
        "--secure",
        "1",
        "--json",
    ]));
    let e: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(e["count"], 6);
    let modes: Vec<&str> = e["modes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["exact", "calibrated"]);
    let cal_mode = &e["modes"][1];
    assert!(cal_mode["mean_bits"].as_f64().unwrap() < 64.0);
    assert!(
        cal_mode["compare_bytes_per_drelu"].as_f64().unwrap()
            < e["modes"][0]["compare_bytes_per_drelu"].as_f64().unwrap()
    );
    assert_eq!(cal_mode["secure"]["agree_plain"], 1, "{cal_mode}");
    let err = fails(&mut knapsec(&[
        "eval",
        "--model",
        p(&model),
        "--data",
        &test_data,
        "--drelu",
        "approx:6,0",
        "--strict",
    ]));
    assert!(err.contains("too narrow"), "{err}");
}
