//! Every plugin this build knows, built-in or dynamic, through its conformance kit.

use knapsec_core::arch::ArchOptions;
use knapsec_tests::fixtures::plugin_libraries;
use knapsec_tests::kits::{arch, backend, strategy};

#[test]
fn every_builtin_passes_its_kit() {
    let r = knapsec_builtin::registry().unwrap();
    let mut failures = Vec::new();
    for name in r.arch_names() {
        failures.extend(arch::check(&*r.arch(&name).unwrap(), &ArchOptions::default()).err());
    }
    for name in r.strategy_names() {
        failures.extend(
            strategy::check(&*r.strategy(&name).unwrap(), strategy::Expect::Heuristic).err(),
        );
    }
    for name in r.backend_names() {
        failures.extend(backend::check(&*r.backend(&name).unwrap()).err());
    }
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_example_plugin_passes_its_kits_through_the_abi() {
    let mut r = knapsec_core::Registry::empty();
    knapsec_plugin_abi::load_into(&mut r, &plugin_libraries().example).unwrap();
    let tiny = r.arch("example-tinynet").unwrap();
    arch::check(&*tiny, &ArchOptions::default()).unwrap();
    let small = ArchOptions {
        input_height: Some(5),
        input_width: Some(3),
        base_width: Some(1),
        ..Default::default()
    };
    arch::check(&*tiny, &small).unwrap();
    strategy::check(
        &*r.strategy("example-ratio-greedy").unwrap(),
        strategy::Expect::Heuristic,
    )
    .unwrap();
}

#[test]
fn securenn_agrees_with_plain_end_to_end() {
    let r = knapsec_builtin::registry().unwrap();
    // four truncating/dividing layers on the path: a few ulp, spread by the weights
    backend::check_end_to_end(&*r.backend("securenn").unwrap(), 0.01).unwrap();
}

#[test]
fn every_private_backend_conforms_against_plain() {
    let r = knapsec_builtin::registry().unwrap();
    let mut private = Vec::new();
    for name in r.backend_names() {
        let b = r.backend(&name).unwrap();
        if !b.is_private() {
            continue;
        }
        private.push(name.clone());
        // a few truncating/dividing layers on every path: a few ulp, spread by the weights
        if let Err(e) = backend::check_conformance(&*b, 0.01) {
            panic!("{e}");
        }
    }
    for name in ["securenn", "fss"] {
        assert!(private.iter().any(|n| n == name), "{name}: {private:?}");
    }
}

#[test]
fn every_private_backend_runs_a_batch_in_the_rounds_of_one_image() {
    let r = knapsec_builtin::registry().unwrap();
    for name in r.backend_names() {
        let b = r.backend(&name).unwrap();
        if !b.is_private() {
            continue;
        }
        if let Err(e) = knapsec_tests::kits::batch::check_batch(&*b, 3, 0.01) {
            panic!("{e}");
        }
    }
}

/// Both DeepLabV3 networks at a small input (random weights, every ReLU kept): every private
/// backend reveals plain's label map, up to pixels whose two best logits are within the
/// truncation noise of the deep network (checked by `check_label_map`).
#[test]
fn every_private_backend_reveals_plains_label_map_on_both_deeplabs() {
    let r = knapsec_builtin::registry().unwrap();
    let small = ArchOptions {
        input_height: Some(17),
        input_width: Some(17),
        ..Default::default()
    };
    for arch in ["deeplabv3-resnet50", "deeplabv3-mobilenetv2"] {
        let model = r
            .arch(arch)
            .unwrap()
            .secure_graph(&small, None, 12)
            .unwrap()
            .expect("deeplab builds its secure graph without libtorch");
        let weights = knapsec_core::graph_build::random_weights(&model, 3);
        let x = knapsec_plain::cases::input(&model, 1);
        for name in r.backend_names() {
            let b = r.backend(&name).unwrap();
            if !b.is_private() {
                continue;
            }
            let options = b.label_only_options("").unwrap().unwrap();
            let rep = knapsec_runtime::simulate(
                &*b,
                &model,
                &weights,
                &x,
                &options,
                Some(std::time::Duration::from_secs(600)),
            )
            .unwrap_or_else(|e| panic!("{arch} with {name}: {e}"));
            let knapsec_core::backend::PartyOutput::Labels(got) = rep.output else {
                panic!(
                    "{arch} with {name}: expected a label map, got {:?}",
                    rep.output
                );
            };
            knapsec_plain::cases::check_label_map(
                &model,
                &weights,
                &x,
                &got,
                256,
                got.len() / 50 + 1,
            )
            .unwrap_or_else(|e| panic!("{arch} with {name}: {e}"));
        }
    }
}
