//! End-to-end tests of `knapsec knapsack`: distortion table → block spec with a report, generic
//! `.npz` instances, and error hygiene (one-line error, exit status 1, no output file left).

use knapsec_core::spec::BlockSpec;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn knapsec<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_knapsec"));
    c.args(args)
        .env_remove("KNAPSEC_PLUGIN_PATH")
        .env_remove("KNAPSEC_LOG");
    c
}

fn run_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = knapsec(args).output().expect("knapsec runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn run_err<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(args: &[S]) -> String {
    let out = knapsec(args).output().expect("knapsec runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?}: status {:?}, stderr {stderr}",
        out.status
    );
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "{args:?}: not one line: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn p(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

#[test]
fn distortion_table_to_spec_with_report() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("d.safetensors");
    let spec = dir.path().join("spec.ron");
    let report = dir.path().join("r.json");
    run_ok(&[
        "knapsack",
        "synth",
        "--arch",
        "resnet18-cifar",
        "--seed",
        "3",
        "-o",
        p(&table),
    ]);
    let out = run_ok(&[
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "--budget",
        "6%",
        "-o",
        p(&spec),
        "--report",
        p(&report),
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let file: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r, file);
    assert_eq!(r["budget_drelus"], 33_423);
    assert_eq!(r["total_drelus"], 557_056);
    assert!(r["drelus_used"].as_u64().unwrap() <= 33_423);
    assert_eq!(r["optimal"], true);
    assert!(r["relative_gap"].as_f64().unwrap() <= 1e-12);
    assert_eq!(r["layers"].as_array().unwrap().len(), 17);
    let kept: u64 = r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["drelus"].as_u64().unwrap())
        .sum();
    assert_eq!(kept, r["drelus_used"].as_u64().unwrap());
    let s = BlockSpec::load(&spec, None).unwrap();
    assert_eq!(s.arch, "resnet18-cifar");
    assert_eq!(s.layers.values().map(|v| v.len()).sum::<usize>(), 3_904);

    // The human summary, and a heuristic without a bound.
    let text = run_ok(&[
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "--budget",
        "6%",
        "-o",
        p(&spec),
        "--strategy",
        "uniform",
    ]);
    assert!(
        text.contains("no bound") && text.contains("layer4_1_2"),
        "{text}"
    );
    // The greedy is never better than the exact optimum.
    let g: Value = serde_json::from_str(&run_ok(&[
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "--budget",
        "6%",
        "-o",
        p(&spec),
        "--strategy",
        "mckp-greedy",
        "--json",
    ]))
    .unwrap();
    assert!(g["objective"].as_f64().unwrap() >= r["objective"].as_f64().unwrap() * (1.0 - 1e-12));
    assert!(g["bound"].as_f64().unwrap() <= r["objective"].as_f64().unwrap() * (1.0 + 1e-12));
}

#[test]
fn npz_instances_round_trip_through_solve_mckp() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("d.safetensors");
    let npz = dir.path().join("i.npz");
    let spec = dir.path().join("s.json");
    run_ok(&[
        "knapsack",
        "synth",
        "--arch",
        "resnet18-cifar",
        "-o",
        p(&table),
    ]);
    run_ok(&[
        "knapsack",
        "export-npz",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "--budget",
        "9%",
        "-o",
        p(&npz),
    ]);
    let a: Value = serde_json::from_str(&run_ok(&[
        "knapsack",
        "solve-mckp",
        p(&npz),
        "--budget",
        "50135",
        "--json",
    ]))
    .unwrap();
    let b: Value = serde_json::from_str(&run_ok(&[
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "--budget",
        "9%",
        "-o",
        p(&spec),
        "--json",
    ]))
    .unwrap();
    assert_eq!(b["budget_drelus"], 50_135);
    assert_eq!(a["choice"].as_array().unwrap().len(), 3_904);
    assert!((a["objective"].as_f64().unwrap() - b["objective"].as_f64().unwrap()).abs() <= 1e-12);
    assert_eq!(a["optimal"], true);
}

#[test]
fn bad_input_is_a_clear_error_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("d.safetensors");
    let spec = dir.path().join("spec.ron");
    run_ok(&[
        "knapsack",
        "synth",
        "--arch",
        "resnet18-cifar",
        "-o",
        p(&table),
    ]);
    let base = [
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&table),
        "-o",
        p(&spec),
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter()
            .map(|x| x.to_string())
            .chain(extra.iter().map(|x| x.to_string()))
            .collect()
    };
    assert!(run_err(&with(&["--budget", "abc"])).contains("budget"));
    assert!(run_err(&with(&["--budget", "150%"])).contains("(0, 100]"));
    assert!(run_err(&with(&["--budget", "6%", "--strategy", "nope"])).contains("nope"));
    // Every channel has identity (cost 0), so budget 0 is feasible; the spec is all identity.
    run_ok(&with(&["--budget", "0"]));
    std::fs::remove_file(&spec).unwrap();
    let e = run_err(&[
        "knapsack",
        "--arch",
        "resnet50-imagenet",
        "--table",
        p(&table),
        "--budget",
        "6%",
        "-o",
        p(&spec),
    ]);
    assert!(e.contains("resnet18-cifar"), "{e}");
    let missing = dir.path().join("missing.safetensors");
    run_err(&[
        "knapsack",
        "--arch",
        "resnet18-cifar",
        "--table",
        p(&missing),
        "--budget",
        "6%",
        "-o",
        p(&spec),
    ]);
    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, b"not a zip").unwrap();
    assert!(
        run_err(&["knapsack", "solve-mckp", p(&garbage), "--budget", "5"]).contains("garbage.npz")
    );
    assert!(!spec.exists(), "no spec may be written on error");
}
