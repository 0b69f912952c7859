//! `knapsec pipeline` end to end on a tiny configuration (8×8 greyscale images written here as
//! IDX files, `resnet18-cifar` at base width 4): it completes, writes the report and plots,
//! secure labels equal plaintext labels (with calibrated windows chosen so that no sign seen
//! in calibration falls within ignored low bits: the tiny network's labels hang on a few
//! near-zero patch sums), and a run killed after its baseline resumes without
//! retraining it; a `knapsec distortion` run killed mid-way resumes to the same table.
#![cfg(feature = "torch")]

use crate::support::{
    assert_running, assert_tables_bitwise_equal, kill, knapsec, ok, small_distortion, wait_until,
};
use std::path::Path;
use std::process::{Command, Stdio};

const CONFIG: &str = r#"(
    arch: "resnet18-cifar",
    options: (input_channels: Some(1), input_height: Some(8), input_width: Some(8), classes: Some(10), base_width: Some(4)),
    data: "mnist:DATA",
    baseline: Train((epochs: 2, lr: 0.05, batch: 8, warmup: 0.0)),
    distortion: (samples: 4, batch: 2, seed: 1),
    budgets: ["25%"],
    strategy: "mckp-exact",
    compare_uniform: true,
    finetune: (epochs: 1, lr: 0.01, batch: 8, warmup: 0.0),
    secure: (images: 2, budget: Some("25%"), backend: "securenn", drelu: "calibrated", frac_bits: 12),
    calibration: (samples: 8, budgets: ["25%"], target_error: 0.0),
)"#;

/// Writes an MNIST-style folder of `n` train and `n / 2` test 8×8 images.
fn write_idx(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, count) in [("train", n), ("t10k", n / 2)] {
        let mut img = vec![0u8, 0, 8, 3];
        for d in [count as u32, 8, 8] {
            img.extend(d.to_be_bytes());
        }
        let mut lbl = vec![0u8, 0, 8, 1];
        lbl.extend((count as u32).to_be_bytes());
        for i in 0..count {
            let label = (i % 10) as u8;
            // A class-dependent bright square, so that the network can learn something.
            for y in 0..8 {
                for x in 0..8 {
                    let on = y / 2 == (label as usize % 4) && x / 2 == (label as usize / 4);
                    img.push(if on {
                        230
                    } else {
                        ((i * 7 + y * 3 + x) % 40) as u8
                    });
                }
            }
            lbl.push(label);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), img).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), lbl).unwrap();
    }
}

/// Kills `child` (SIGKILL) as soon as it has written `file`, which it must within `secs`.
fn kill_once_it_exists(child: &mut std::process::Child, file: &Path, secs: u64) {
    wait_until(
        secs,
        10,
        || {
            assert_running(child, &format!("{} existed", file.display()));
            file.exists()
        },
        || format!("no {} after {secs} s", file.display()),
    );
    kill(child);
}

fn pipeline(config: &Path, out: &Path) -> Command {
    let mut cmd = knapsec(&["pipeline", "--config"]);
    cmd.arg(config).arg("-o").arg(out);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

#[test]
fn tiny_pipeline_completes_and_resumes_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_idx(&data, 40);
    let config = tmp.path().join("pipeline.ron");
    std::fs::write(&config, CONFIG.replace("DATA", data.to_str().unwrap())).unwrap();
    let out = tmp.path().join("out");

    // First run: killed as soon as the baseline weights exist.
    let mut child = pipeline(&config, &out).spawn().unwrap();
    let baseline = out.join("baseline/weights.safetensors");
    kill_once_it_exists(&mut child, &baseline, 300);
    assert!(!out.join("report.json").exists());

    // Second run: resumes (the baseline is not trained again) and completes.
    let done = pipeline(&config, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "pipeline failed:\n{stderr}");
    assert!(
        stderr.contains("baseline training: ") && stderr.contains("exists, skipped"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "knapsack and uniform at one budget");
    let total = report["baseline"]["drelus"].as_u64().unwrap();
    for r in runs {
        assert!(r["drelus"].as_u64().unwrap() <= total / 4, "{r}");
        assert!((0.0..=1.0).contains(&r["accuracy"].as_f64().unwrap()));
    }
    let secure = &report["secure"];
    assert_eq!(secure["images"], 2);
    assert_eq!(secure["labels_agree"], true);
    assert_eq!(secure["secure_labels"], secure["plain_labels"]);
    let cal = &report["calibration"].as_array().unwrap()[0];
    assert_eq!(cal["budget"], "25%");
    assert_eq!(cal["samples"], 8);
    assert_eq!(cal["eval_images"], 20);
    for k in ["exact_top1", "calibrated_top1", "agree_exact"] {
        assert!((0.0..=1.0).contains(&cal[k].as_f64().unwrap()), "{cal}");
    }
    // The calibrated windows compare fewer bits than the exact DReLU's 63.
    let bits = cal["mean_bits"].as_f64().unwrap();
    assert!(bits > 1.0 && bits < 64.0, "{cal}");
    assert!(
        cal["compare_bytes_per_drelu"].as_f64().unwrap()
            < cal["compare_bytes_per_drelu_exact"].as_f64().unwrap(),
        "{cal}"
    );
    assert!(
        out.join("runs/25pct-mckp-exact/calibration/model/model.ron")
            .exists()
    );
    for plot in ["accuracy.png", "drelus_per_layer.png"] {
        let bytes = std::fs::read(out.join(plot)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{plot}");
    }

    // Third run: everything exists, nothing is recomputed.
    let again = pipeline(&config, &out).output().unwrap();
    assert!(again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!stderr.contains("fine-tuning"), "{stderr}");
    assert!(stderr.contains("calibration at 25%: "), "{stderr}");
    assert!(!stderr.contains("windows from"), "{stderr}");
}

#[test]
fn bad_configurations_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("p.ron");
    std::fs::write(&config, "(budgets: [], strategy: \"mckp-exact\")").unwrap();
    let out = pipeline(&config, &tmp.path().join("o")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no budgets"));
    std::fs::write(&config, "(budgetz: [\"6%\"])").unwrap();
    let out = pipeline(&config, &tmp.path().join("o")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid pipeline configuration"));
}

/// `knapsec distortion` (reference schedule, one worker, so that values are bitwise
/// reproducible) on a small random-weight network.
fn distortion(out: &Path, resume: bool) -> Command {
    let mut cmd = knapsec(&["distortion"]);
    cmd.args(small_distortion(&[
        "--samples",
        "2",
        "--batch",
        "2",
        "--chunk",
        "1",
        "--schedule",
        "single",
        "-q",
        "-o",
    ]))
    .arg(out);
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd
}

/// The variant count of `knapsec distortion`'s closing line ("wrote …: N variants (…").
fn variants_run(stderr: &str) -> u64 {
    let line = stderr.lines().find(|l| l.starts_with("wrote ")).unwrap();
    let after = line.split(": ").nth(1).unwrap();
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn a_killed_distortion_run_resumes_to_the_same_table() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole.safetensors");
    let (_, stderr) = ok(&mut distortion(&whole, false));
    let total = variants_run(&stderr);

    // Killed (SIGKILL) once its first checkpoint exists.
    let resumed = tmp.path().join("resumed.safetensors");
    let partial = tmp.path().join("resumed.safetensors.partial");
    let mut child = distortion(&resumed, false).spawn().unwrap();
    kill_once_it_exists(&mut child, &partial, 120);
    assert!(!resumed.exists(), "a killed run left a table");

    // Without --resume the checkpoint is not overwritten.
    let refused = distortion(&resumed, false).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resume"));

    let (_, stderr) = ok(&mut distortion(&resumed, true));
    let rerun = variants_run(&stderr);
    assert!(
        rerun < total,
        "the resumed run measured {rerun} of {total} variants: finished work was redone"
    );
    assert!(!partial.exists());
    // One worker with the same torch threads: the same arithmetic, bit for bit.
    assert_tables_bitwise_equal(&resumed, &whole);
}

/// The pipeline on an imported network (`fmnist_small.onnx`: a small CNN with BatchNorm, max
/// pooling and a Concat, trained on Fashion-MNIST and exported by PyTorch; see knapsec-arch-
/// onnx's fixtures): its own weights as the baseline, distortion, knapsack, fine-tuning,
/// export and secure inference, whose labels equal the plaintext ones. The `onnx:` path is
/// relative to the configuration's folder.
#[test]
fn pipeline_runs_an_imported_onnx_network_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let onnx = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../archs/onnx/tests/fixtures/fmnist_small.onnx");
    std::fs::create_dir(tmp.path().join("nets")).unwrap();
    std::fs::copy(&onnx, tmp.path().join("nets/fmnist_small.onnx")).unwrap();
    let config = tmp.path().join("pipeline.ron");
    std::fs::write(
        &config,
        r#"(
    arch: "onnx:nets/fmnist_small.onnx",
    options: (),
    data: "fashion-mnist",
    eval_subset: Some(200),
    baseline: Imported,
    distortion: (samples: 4, batch: 4, seed: 1),
    budgets: ["30%"],
    strategy: "mckp-exact",
    compare_uniform: false,
    finetune: (epochs: 1, lr: 0.01, batch: 32, warmup: 0.0, train_subset: Some(512)),
    secure: (images: 2, budget: Some("30%"), backend: "securenn", drelu: "exact", frac_bits: 12),
)"#,
    )
    .unwrap();
    let out = tmp.path().join("out");
    let done = pipeline(&config, &out).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "pipeline failed:\n{stderr}");
    assert!(
        stderr.contains("the imported network's own weights"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert!(
        report["arch"]
            .as_str()
            .unwrap()
            .ends_with("nets/fmnist_small.onnx"),
        "{}",
        report["arch"]
    );
    // Trained on Fashion-MNIST: far above chance on the first 200 test images.
    let base = report["baseline"]["accuracy"].as_f64().unwrap();
    assert!(base > 0.6, "baseline accuracy {base}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let total = report["baseline"]["drelus"].as_u64().unwrap();
    assert!(
        runs[0]["drelus"].as_u64().unwrap() * 10 <= total * 3,
        "{}",
        runs[0]
    );
    assert!((0.0..=1.0).contains(&runs[0]["accuracy"].as_f64().unwrap()));
    let secure = &report["secure"];
    assert_eq!(secure["images"], 2);
    assert_eq!(secure["labels_agree"], true);
    assert_eq!(secure["secure_labels"], secure["plain_labels"]);
    assert!(out.join("secure/model/model.ron").exists());
}

#[test]
fn an_imported_network_takes_no_architecture_options() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("p.ron");
    std::fs::write(&config, "(arch: \"onnx:net.onnx\", baseline: Imported)").unwrap();
    let out = pipeline(&config, &tmp.path().join("o")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("options: ()"), "{stderr}");
    std::fs::write(&config, "(baseline: Imported)").unwrap();
    let out = pipeline(&config, &tmp.path().join("o")).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs an imported network"), "{stderr}");
}
