//! Dynamic plugins through the C ABI: the example plugin is built with cargo and loaded; bad
//! libraries are refused with errors that say why.

use knapsec_core::arch::ArchOptions;
use knapsec_core::block::BlockSize;
use knapsec_core::knapsack::{KnapsackError, McKpProblem, SolveLimits};
use knapsec_core::registry::{PluginKind, PluginSource, Registry};
use knapsec_plugin_abi::{AbiError, DynamicPlugin, PluginSet, load_into, load_library};
use knapsec_tests::fixtures::plugin_libraries;
use std::path::{Path, PathBuf};

fn load_err(path: &Path) -> AbiError {
    load_library(path)
        .err()
        .unwrap_or_else(|| panic!("{} was loaded", path.display()))
}

#[test]
fn the_example_registers_beside_the_builtins_with_its_source() {
    let lib = &plugin_libraries().example;
    let mut r = knapsec_builtin::registry().unwrap();
    let builtins = r.list().len();
    let added = load_into(&mut r, lib).unwrap();
    let kinds: Vec<_> = added
        .iter()
        .map(|p| (p.kind(), p.name().to_string()))
        .collect();
    assert_eq!(
        kinds,
        [
            (PluginKind::Architecture, "example-tinynet".to_string()),
            (
                PluginKind::KnapsackStrategy,
                "example-ratio-greedy".to_string()
            )
        ]
    );
    let list = r.list();
    assert_eq!(list.len(), builtins + 2);
    for name in ["example-tinynet", "example-ratio-greedy"] {
        let p = list.iter().find(|p| p.name == name).unwrap();
        assert_eq!(p.source, PluginSource::Dynamic(lib.display().to_string()));
        assert!(
            p.description.starts_with("example plugin:"),
            "{}",
            p.description
        );
    }
    let names: Vec<_> = list.iter().map(|p| p.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

#[test]
fn calls_cross_the_abi_with_options_candidates_and_typed_errors() {
    let mut r = Registry::empty();
    load_into(&mut r, &plugin_libraries().example).unwrap();
    let tiny = r.arch("example-tinynet").unwrap();
    let o = ArchOptions {
        input_height: Some(9),
        input_width: Some(5),
        base_width: Some(2),
        ..Default::default()
    };
    let t = tiny.layer_table(&o).unwrap();
    let shapes = t.shapes();
    assert_eq!(
        shapes,
        [("conv1", 2, 9, 5), ("conv2", 4, 5, 3), ("fc1", 8, 1, 1)]
    );
    // The plugin's own candidate rule (patches up to 4x4), not the host's default (16).
    let c = tiny.candidates(&t.layers[0]);
    assert!(
        c.contains(&BlockSize::Patch { h: 4, w: 4 })
            && !c.contains(&BlockSize::Patch { h: 5, w: 5 })
    );
    // A layer no table has shown is asked for directly.
    let other = knapsec_core::layer::ReluLayer::new("elsewhere", 1, 2, 2);
    assert_eq!(tiny.candidates(&other).len(), 5); // 2x2, 1x2, 2x1, 1x1, identity
    // The plugin's error text crosses the boundary.
    let e = tiny
        .layer_table(&ArchOptions {
            variant: Some("huge".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("no variant \"huge\""), "{e}");

    let greedy = r.strategy("example-ratio-greedy").unwrap();
    let p = McKpProblem::from_classes(
        &[vec![(1, 20.0), (11, 10.0)], vec![(1, 12.0), (4, 3.0)]],
        15,
    );
    let s = greedy.solve(&p, &SolveLimits::default()).unwrap();
    assert_eq!(
        (s.choice.as_slice(), s.cost, s.objective, s.optimal),
        (&[1usize, 1][..], 15, 13.0, true)
    );
    let p = McKpProblem::from_classes(&[vec![(5, 1.0)], vec![(5, 1.0)]], 9);
    assert!(matches!(
        greedy.solve(&p, &SolveLimits::default()),
        Err(KnapsackError::Infeasible {
            min_cost: 10,
            budget: 9
        })
    ));
}

#[test]
fn a_missing_file_is_refused() {
    let e = load_err(Path::new("no/such/libplugin.so"));
    assert!(matches!(e, AbiError::NotFound { .. }), "{e}");
    assert!(
        e.to_string().contains("no/such/libplugin.so") && e.to_string().contains("no such file")
    );
}

#[test]
fn a_text_file_is_refused_as_not_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libfake.so");
    std::fs::write(&fake, "this is text, not ELF\n").unwrap();
    let e = load_err(&fake);
    assert!(matches!(e, AbiError::NotALibrary { .. }), "{e}");
    assert!(
        e.to_string().contains("libfake.so")
            && e.to_string().contains("not a loadable shared library"),
        "{e}"
    );
}

/// A shared library that is certainly present and not a plugin: one this process already
/// mapped (found in /proc/self/maps), other than libc.
fn some_system_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| {
            p.contains(".so")
                && !p.contains("libc.so")
                && !p.contains("ld-linux")
                && !p.contains("knapsec")
        })
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("a shared library mapped into this process")
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let lib = some_system_library();
    let e = load_err(&lib);
    assert!(
        matches!(e, AbiError::NoEntry { .. }),
        "{}: {e}",
        lib.display()
    );
    assert!(
        e.to_string().contains("not a knapsec plugin") && e.to_string().contains("knapsec_plugins"),
        "{e}"
    );
}

#[test]
fn a_library_of_another_abi_version_is_refused_naming_both_versions() {
    let e = load_err(&plugin_libraries().future_abi);
    assert!(
        matches!(
            e,
            AbiError::WrongAbi {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("version 99") && text.contains("version 1"),
        "{text}"
    );
}

#[test]
fn panics_and_malformed_answers_become_errors() {
    let mut r = Registry::empty();
    let plugins = load_into(&mut r, &plugin_libraries().faulty).unwrap();
    assert_eq!(plugins.len(), 3);
    assert!(
        plugins
            .iter()
            .all(|p| matches!(p, DynamicPlugin::Arch(_) | DynamicPlugin::Strategy(_)))
    );

    let table_error = || {
        r.arch("faulty-panics")
            .unwrap()
            .layer_table(&ArchOptions::default())
            .unwrap_err()
            .to_string()
    };
    let e = table_error();
    assert!(
        e.contains("panicked") && e.contains("exploded on purpose") && e.contains("faulty-panics"),
        "{e}"
    );
    // The process survives, and the plugin can be called again.
    assert_eq!(e, table_error());

    let p = McKpProblem::from_classes(&[vec![(1, 2.0), (3, 1.0)], vec![(1, 2.0), (5, 0.0)]], 4);
    let solve_err = |name: &str| {
        r.strategy(name)
            .unwrap()
            .solve(&p, &SolveLimits::default())
            .unwrap_err()
    };
    let e = solve_err("faulty-garbage");
    assert!(
        matches!(&e, KnapsackError::Strategy { strategy, .. } if strategy == "faulty-garbage"),
        "{e}"
    );
    assert!(e.to_string().contains("malformed answer"), "{e}");

    let e = solve_err("faulty-overspends");
    assert!(
        e.to_string().contains("malformed answer")
            && e.to_string().contains("over the budget of 4"),
        "{e}"
    );
}

#[test]
fn the_same_plugin_from_two_libraries_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("libcopy_of_example.so");
    std::fs::copy(&plugin_libraries().example, &copy).unwrap();
    let set = PluginSet {
        load: vec![plugin_libraries().example.clone(), copy.clone()],
        ..Default::default()
    };
    let e = set.registry().unwrap_err().to_string();
    assert!(e.contains("registered twice"), "{e}");
    assert!(
        e.contains(&plugin_libraries().example.display().to_string())
            && e.contains("libcopy_of_example.so"),
        "{e}"
    );
    // Named twice by the same path, it is loaded once.
    let set = PluginSet {
        load: vec![copy.clone(), copy.clone()],
        dirs: vec![dir.path().into()],
        ..Default::default()
    };
    assert_eq!(
        set.registry().unwrap().list().len(),
        knapsec_builtin::registry().unwrap().list().len() + 2
    );
}
