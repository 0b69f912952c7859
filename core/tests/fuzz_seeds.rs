//! The seed corpus of the fuzz targets (`fuzz/seeds/`, made by `fuzz/seeds/make_seeds.py`)
//! holds valid examples of each format: every seed parses, so the fuzzers start from inputs
//! that reach past the first check.

use knapsec_core::distortion::DistortionTable;
use knapsec_core::graph::{ModelWeights, SecureModel};
use knapsec_core::{BlockSpec, LayerTable, ReluLayer};
use std::path::PathBuf;

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

fn text(p: &std::path::Path, b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap_or_else(|_| panic!("{} is not UTF-8", p.display()))
}

#[test]
fn every_seed_parses() {
    let table = LayerTable::new(
        "fuzz",
        vec![ReluLayer::new("a", 2, 4, 4), ReluLayer::new("b", 3, 2, 2)],
    )
    .unwrap();
    for (p, b) in seeds("spec_pickle") {
        let r = knapsec_core::spec_pickle::from_reference_pickle(&b, "x");
        // One seed is a valid pickle that is not a spec: it must get past the opcodes.
        if p.ends_with("plain_dict.pickle") {
            assert!(
                r.unwrap_err().contains("not a numpy array"),
                "{}",
                p.display()
            );
        } else {
            r.unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
    }
    for (p, b) in seeds("block_spec_ron") {
        ron::from_str::<BlockSpec>(&text(&p, &b))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in seeds("block_spec_json") {
        let s: BlockSpec =
            serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if s.arch == "fuzz" {
            s.validate(&table).unwrap();
        }
    }
    for (p, b) in seeds("secure_model") {
        SecureModel::from_ron(&text(&p, &b)).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in seeds("model_weights") {
        ModelWeights::from_bytes(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in seeds("distortion_table") {
        let t = DistortionTable::from_bytes(&b).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        t.validate(&table)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    for (p, b) in seeds("idx") {
        knapsec_core::idx::parse(&b, "x").unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}
