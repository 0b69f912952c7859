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
