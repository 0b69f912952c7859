//! End-to-end tests of the `knapsec` binary: plugin sets, `arch`, `spec`, and error hygiene
//! (one-line `error: …` on stderr, exit status 1, no panic, no half-written output).

use crate::support::{json, knapsec, run_err, run_ok};
use knapsec_core::spec::BlockSpec;
use knapsec_tests::fixtures::{fixture, plugin_libraries};
use std::path::Path;

fn example() -> &'static str {
    plugin_libraries().example.to_str().expect("UTF-8 path")
}

#[test]
fn plugins_list_shows_the_example_beside_the_builtins_sorted_with_kinds() {
    let builtins = json(&run_ok(&mut knapsec(&["plugins", "list", "--json"])));
    let all = json(&run_ok(&mut knapsec(&[
        "plugins",
        "list",
        "--json",
        "--plugin",
        example(),
    ])));
    let (builtins, all) = (builtins.as_array().unwrap(), all.as_array().unwrap());
    assert_eq!(all.len(), builtins.len() + 2);
    for b in builtins {
        assert!(all.contains(b), "{b} missing");
        assert_eq!(b["source"]["type"], "builtin");
    }
    let find = |name: &str| {
        all.iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(find("example-tinynet")["kind"], "architecture");
    assert_eq!(find("example-ratio-greedy")["kind"], "knapsack-strategy");
    for name in ["example-tinynet", "example-ratio-greedy"] {
        assert_eq!(
            find(name)["source"],
            serde_json::json!({"type": "dynamic", "from": example()})
        );
        assert!(
            find(name)["description"]
                .as_str()
                .unwrap()
                .starts_with("example plugin:")
        );
    }
    let keys: Vec<(String, String)> = all
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    let table = run_ok(&mut knapsec(&["plugins", "list", "--plugin", example()]));
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("architecture") && l.contains("example-tinynet")),
        "{table}"
    );
}

#[test]
fn arch_info_prints_the_layer_table_as_documented_json() {
    let info = json(&run_ok(&mut knapsec(&[
        "arch",
        "info",
        "example-tinynet",
        "--json",
        "--input-size",
        "9",
        "5",
        "--base-width",
        "2",
        "--plugin",
        example(),
    ])));
    assert_eq!(info["arch"], "example-tinynet");
    assert_eq!(info["layers"], 3);
    assert_eq!(info["channels"], 2 + 4 + 8);
    assert_eq!(info["drelus"], 2 * 45 + 4 * 15 + 8);
    assert_eq!(
        info["input"],
        serde_json::json!({"channels": null, "height": 9, "width": 5})
    );
    let per_layer = info["per_layer"].as_array().unwrap();
    assert_eq!(
        per_layer[1],
        serde_json::json!({"name": "conv2", "channels": 4, "height": 5, "width": 3, "drelus": 60})
    );
    let list = run_ok(&mut knapsec(&["arch", "list", "--plugin", example()]));
    assert!(
        list.lines().any(|l| l.starts_with("example-tinynet")),
        "{list}"
    );
    let text = run_ok(&mut knapsec(&[
        "arch",
        "info",
        "example-tinynet",
        "--plugin",
        example(),
    ]));
    assert!(
        text.starts_with("example-tinynet: 3 ReLU layers, 56 channels,"),
        "{text}"
    );
}

#[test]
fn a_reference_pickle_converts_to_ron_and_json_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = fixture("reference_specs/tinynet_mixed.pickle");
    let expected = BlockSpec::load(&pickle, Some("example-tinynet")).unwrap();
    // Every kind of row is in the fixture.
    let all: Vec<_> = expected.layers.values().flatten().collect();
    for b in ["1x1", "identity", "zero", "2x3", "4x4"] {
        assert!(all.iter().any(|x| x.to_string() == b), "fixture lacks {b}");
    }
    assert_eq!(
        BlockSpec::load(
            &fixture("reference_specs/tinynet_protocol2.pickle"),
            Some("example-tinynet")
        )
        .unwrap(),
        expected
    );

    let ron = dir.path().join("spec.ron");
    let json_path = dir.path().join("spec.json");
    let back = dir.path().join("back.pickle");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    run_ok(&mut knapsec(&[
        "spec",
        "convert",
        &p(&pickle),
        &p(&ron),
        "--arch",
        "example-tinynet",
    ]));
    run_ok(&mut knapsec(&["spec", "convert", &p(&ron), &p(&json_path)]));
    run_ok(&mut knapsec(&[
        "spec",
        "convert",
        &p(&json_path),
        &p(&back),
    ]));
    assert_eq!(BlockSpec::load(&ron, None).unwrap(), expected);
    let j = json(&std::fs::read_to_string(&json_path).unwrap());
    assert_eq!(j["arch"], "example-tinynet");
    assert_eq!(j["format"], 1);
    assert_eq!(j["layers"]["conv1"][0], serde_json::json!([1, 1]));
    assert_eq!(j["layers"]["conv1"][2], "Identity");
    assert_eq!(j["layers"]["conv1"][3], "Zero");
    assert_eq!(BlockSpec::load(&json_path, None).unwrap(), expected);
    assert_eq!(
        BlockSpec::load(&back, Some("example-tinynet")).unwrap(),
        expected
    );

    // The RON names its architecture; another --arch is refused.
    let e = run_err(&mut knapsec(&[
        "spec",
        "convert",
        &p(&ron),
        &p(&dir.path().join("x.json")),
        "--arch",
        "other",
    ]));
    assert!(e.contains("example-tinynet") && e.contains("other"), "{e}");
    assert!(!dir.path().join("x.json").exists());
}

#[test]
fn validation_names_the_first_mismatching_layer() {
    // `spec validate --arch example-tinynet EXTRA SPEC` with the example plugin.
    let validate = |extra: &[&str], spec: &Path| {
        let mut c = knapsec(&["spec", "validate", "--arch", "example-tinynet"]);
        c.args(extra).args(["--plugin", example()]).arg(spec);
        c
    };
    let mixed = fixture("reference_specs/tinynet_mixed.pickle");
    let ok = run_ok(&mut validate(&[], &mixed));
    assert!(
        ok.starts_with("ok: ") && ok.contains("example-tinynet"),
        "{ok}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ron = dir.path().join("other.ron");
    std::fs::write(
        &ron,
        r#"(format: 1, arch: "resnet18-cifar", layers: {"stem": [(1, 1)]})"#,
    )
    .unwrap();
    let cases: [(&[&str], &Path, &[&str]); 3] = [
        // A spec of another network: its first layer, "stem", is unknown here.
        (
            &[],
            &fixture("reference_specs/resnet_like.pickle"),
            &["\"stem\"", "resnet_like.pickle"],
        ),
        // The right layers at another width: the first layer's channel count is named.
        (
            &["--base-width", "4"],
            &mixed,
            &["\"conv1\"", "8 channels", "4"],
        ),
        // A RON spec that names another architecture.
        (&[], &ron, &["resnet18-cifar", "\"stem\""]),
    ];
    for (extra, spec, needles) in cases {
        let e = run_err(&mut validate(extra, spec));
        assert!(needles.iter().all(|n| e.contains(n)), "{e}");
    }
}

#[test]
fn plugin_set_files_and_the_plugin_path() {
    let dir = tempfile::tempdir().unwrap();
    let libs = dir.path().join("libs");
    std::fs::create_dir(&libs).unwrap();
    std::fs::copy(example(), libs.join("libmine.so")).unwrap();
    let set = dir.path().join("set.ron");
    std::fs::write(&set, r#"(load: ["libs/libmine.so"])"#).unwrap();
    let names = |out: String| -> Vec<String> {
        json(&out)
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    let listed = names(run_ok(&mut knapsec(&[
        "plugins",
        "list",
        "--json",
        "--plugins",
        set.to_str().unwrap(),
    ])));
    assert!(
        listed.contains(&"example-tinynet".to_string()),
        "{listed:?}"
    );

    let listed = names(run_ok(
        knapsec(&["plugins", "list", "--json"]).env("KNAPSEC_PLUGIN_PATH", &libs),
    ));
    assert!(
        listed.contains(&"example-ratio-greedy".to_string()),
        "{listed:?}"
    );
    let listed = names(run_ok(
        knapsec(&["plugins", "list", "--json", "--no-plugin-path"])
            .env("KNAPSEC_PLUGIN_PATH", &libs),
    ));
    assert!(
        !listed.contains(&"example-ratio-greedy".to_string()),
        "{listed:?}"
    );

    std::fs::write(&set, r#"(builtins: (exclude: ["no-such-plugin"]))"#).unwrap();
    let e = run_err(&mut knapsec(&[
        "plugins",
        "list",
        "--plugins",
        set.to_str().unwrap(),
    ]));
    assert!(
        e.contains("no-such-plugin") && e.contains("not a built-in"),
        "{e}"
    );
    std::fs::write(&set, r#"(load: ["libs/libmine.so"], typo: 1)"#).unwrap();
    let e = run_err(&mut knapsec(&[
        "plugins",
        "list",
        "--plugins",
        set.to_str().unwrap(),
    ]));
    assert!(e.contains("set.ron") && e.contains("typo"), "{e}");
}

#[test]
fn bad_input_fails_with_one_line_and_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.ron");
    let o = out.to_str().unwrap();
    let text = dir.path().join("libtext.so");
    std::fs::write(&text, "not a library").unwrap();
    let garbage = dir.path().join("garbage.pickle");
    std::fs::write(&garbage, b"\x80\x04garbage").unwrap();
    let libs = plugin_libraries();
    let pickle = fixture("reference_specs/tinynet_mixed.pickle");
    let s = |path: &Path| path.to_str().unwrap().to_string();
    // (arguments, what the one-line error must say)
    let cases: Vec<(Vec<String>, &[&str])> = vec![
        (args(&["arch", "info", "no-such-arch"]), &["no-such-arch"]),
        (
            args(&["--plugin", "no/such/lib.so", "plugins", "list"]),
            &["no/such/lib.so", "no such file"],
        ),
        (
            args(&["plugins", "list", "--plugin", &s(&text)]),
            &["not a loadable shared library"],
        ),
        (
            args(&["plugins", "list", "--plugin", &s(&libs.future_abi)]),
            &["version 99", "version 1"],
        ),
        (
            args(&[
                "arch",
                "info",
                "faulty-panics",
                "--plugin",
                &s(&libs.faulty),
            ]),
            &["panicked", "exploded on purpose"],
        ),
        (args(&["spec", "convert", &s(&pickle), o]), &["--arch"]),
        (
            args(&["spec", "convert", &s(&pickle), "out.yaml", "--arch", "x"]),
            &["out.yaml", "extension"],
        ),
        (
            args(&["spec", "convert", &s(&garbage), o, "--arch", "x"]),
            &["garbage.pickle"],
        ),
    ];
    for (args, needles) in cases {
        let e = run_err(&mut knapsec(&args));
        assert!(needles.iter().all(|n| e.contains(n)), "{args:?}: {e}");
    }
    assert!(!out.exists(), "a failed conversion left {o}");
    // Usage errors are clap's (status 2).
    let status = knapsec(&["arch", "info"]).output().unwrap().status;
    assert_eq!(status.code(), Some(2));
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

#[test]
fn bench_secure_runs_any_architecture_with_any_backend() {
    let run = |backend: &str| {
        json(&run_ok(&mut knapsec(&[
            "bench",
            "secure",
            "--arch",
            "example-tinycnn",
            "--backend",
            backend,
            "--budget",
            "50%",
        ])))
    };
    let s = run("securenn");
    assert_eq!(s["backend"], "securenn");
    assert_eq!(s["arch"], "example-tinycnn");
    let (off, on) = (
        s["bytes_offline"].as_u64().unwrap(),
        s["bytes_online"].as_u64().unwrap(),
    );
    assert!(on > 0 && s["rounds_online"].as_u64().unwrap() > 0, "{s}");
    // securenn's closed form of the bytes per inference holds on the architecture's graph
    assert_eq!(s["closed_form_bytes"].as_u64().unwrap(), off + on, "{s}");
    assert_eq!(s["key_bytes"], 0);
    // the cleartext oracle runs through the same harness (its one phase is online)
    let p = run("plain");
    assert_eq!(p["backend"], "plain");
    assert_eq!(p["bytes_offline"], 0);
    assert!(p["closed_form_bytes"].is_null(), "{p}");
    // an architecture that is not registered, a backend that cannot reveal labels only
    let e = run_err(&mut knapsec(&["bench", "secure", "--arch", "no-such-net"]));
    assert!(e.contains("no-such-net"), "{e}");
    let e = run_err(&mut knapsec(&[
        "bench",
        "secure",
        "--arch",
        "example-tinycnn",
        "--backend",
        "plain",
        "--drelu",
        "approx:16",
    ]));
    assert!(e.contains("--options"), "{e}");
}
