//! `knapsec export` and `knapsec simulate` on imported ONNX networks whose secure graphs need
//! the ops of format 3: `small_concat_ceil.onnx` (ceil-mode max pooling that adds a row and a
//! column) and `ops_zoo.onnx` (a nearest ×2 resize), exported with their initializers as the
//! weights, simulated in `plain`, `securenn` and `fss`: the secure logits within a few ulps of
//! `plain`'s, the same label.

use crate::support::{FRAC, json, knapsec, logits, p, run_ok, write_npy};
use std::path::Path;

#[test]
fn imported_networks_with_ceil_pooling_and_resizing_export_and_simulate() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../archs/onnx/tests/fixtures");
    for (name, shape, format_3) in [
        ("small_concat_ceil.onnx", [3, 20, 20], "ceil_mode: true"),
        ("ops_zoo.onnx", [2, 12, 12], "Resize("),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        let arch = format!("onnx:{}", p(&fixtures.join(name)));
        run_ok(&mut knapsec(&[
            "export",
            "--arch",
            &arch,
            "--frac-bits",
            &FRAC.to_string(),
            "-o",
            p(&model),
        ]));
        let text = std::fs::read_to_string(model.join("model.ron")).unwrap();
        assert!(
            text.contains("format: 3") && text.contains(format_3),
            "{name}: {text}"
        );
        let n = shape.iter().product::<u32>() as usize;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let input = tmp.path().join("x.npy");
        write_npy(&input, shape, &x);
        let simulate = |backend: &str| {
            let out = run_ok(&mut knapsec(&[
                "simulate",
                "--json",
                "--backend",
                backend,
                "--model",
                p(&model),
                "--input",
                p(&input),
            ]));
            logits(&json(&out))
        };
        let plain = simulate("plain");
        let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let ulp = 1.0 / f64::from(1u32 << FRAC);
        for backend in ["securenn", "fss"] {
            let got = simulate(backend);
            assert_eq!(got.len(), plain.len(), "{name}, {backend}");
            let diff = got
                .iter()
                .zip(&plain)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{name}: |{backend} - plain| = {diff} ({} ulp)", diff / ulp);
            assert!(
                diff <= 8.0 * ulp,
                "{name}: {backend} {got:?} vs plain {plain:?}"
            );
            assert_eq!(argmax(&got), argmax(&plain), "{name}: {backend}'s label");
        }
    }
}
