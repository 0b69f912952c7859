//! End-to-end tests of `knapsec knapsack`: distortion table → block spec with a report, generic
//! `.npz` instances, and error hygiene (one-line error, exit status 1, no output file left).

use crate::support::{json, knapsec, p};
use knapsec_core::spec::BlockSpec;
use serde_json::Value;
use std::path::Path;

fn run_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    crate::support::run_ok(&mut knapsec(args))
}

fn run_err<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    crate::support::run_err(&mut knapsec(args))
}

/// A synthetic distortion table of `resnet18-cifar` (`knapsack synth`), `extra` arguments added.
fn synth(table: &Path, extra: &[&str]) {
    let mut args = vec![
        "knapsack",
        "synth",
        "--arch",
        "resnet18-cifar",
        "-o",
        p(table),
    ];
    args.extend(extra);
    run_ok(&args);
}

/// `knapsack --arch ARCH --table TABLE --budget BUDGET -o SPEC EXTRA`.
fn solve(arch: &str, table: &Path, budget: &str, spec: &Path, extra: &[&str]) -> Vec<String> {
    [
        "knapsack",
        "--arch",
        arch,
        "--table",
        p(table),
        "--budget",
        budget,
        "-o",
        p(spec),
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn distortion_table_to_spec_with_report() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("d.safetensors");
    let spec = dir.path().join("spec.ron");
    let report = dir.path().join("r.json");
    synth(&table, &["--seed", "3"]);
    let r = json(&run_ok(&solve(
        "resnet18-cifar",
        &table,
        "6%",
        &spec,
        &["--report", p(&report), "--json"],
    )));
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
    let text = run_ok(&solve(
        "resnet18-cifar",
        &table,
        "6%",
        &spec,
        &["--strategy", "uniform"],
    ));
    assert!(
        text.contains("no bound") && text.contains("layer4_1_2"),
        "{text}"
    );
    // The greedy is never better than the exact optimum.
    let g = json(&run_ok(&solve(
        "resnet18-cifar",
        &table,
        "6%",
        &spec,
        &["--strategy", "mckp-greedy", "--json"],
    )));
    assert!(g["objective"].as_f64().unwrap() >= r["objective"].as_f64().unwrap() * (1.0 - 1e-12));
    assert!(g["bound"].as_f64().unwrap() <= r["objective"].as_f64().unwrap() * (1.0 + 1e-12));
}

#[test]
fn npz_instances_round_trip_through_solve_mckp() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("d.safetensors");
    let npz = dir.path().join("i.npz");
    let spec = dir.path().join("s.json");
    synth(&table, &[]);
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
    let a = json(&run_ok(&[
        "knapsack",
        "solve-mckp",
        p(&npz),
        "--budget",
        "50135",
        "--json",
    ]));
    let b = json(&run_ok(&solve(
        "resnet18-cifar",
        &table,
        "9%",
        &spec,
        &["--json"],
    )));
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
    synth(&table, &[]);
    let with = |budget: &str, extra: &[&str]| solve("resnet18-cifar", &table, budget, &spec, extra);
    assert!(run_err(&with("abc", &[])).contains("budget"));
    assert!(run_err(&with("150%", &[])).contains("(0, 100]"));
    assert!(run_err(&with("6%", &["--strategy", "nope"])).contains("nope"));
    // Every channel has identity (cost 0), so budget 0 is feasible; the spec is all identity.
    run_ok(&with("0", &[]));
    std::fs::remove_file(&spec).unwrap();
    let e = run_err(&solve("resnet50-imagenet", &table, "6%", &spec, &[]));
    assert!(e.contains("resnet18-cifar"), "{e}");
    let missing = dir.path().join("missing.safetensors");
    run_err(&solve("resnet18-cifar", &missing, "6%", &spec, &[]));
    let garbage = dir.path().join("garbage.npz");
    std::fs::write(&garbage, b"not a zip").unwrap();
    assert!(
        run_err(&["knapsack", "solve-mckp", p(&garbage), "--budget", "5"]).contains("garbage.npz")
    );
    assert!(!spec.exists(), "no spec may be written on error");
}
