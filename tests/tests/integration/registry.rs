//! The registry of built-in plugins (linked through the `knapsec-builtin` facade).

use knapsec_core::arch::{ArchAdapter, ArchOptions};
use knapsec_core::layer::{LayerTable, ReluLayer};
use knapsec_core::registry::{PluginKind, PluginSource, Registry};
use knapsec_plugin_abi::{BuiltinFilter, PluginSet};
use std::sync::Arc;

#[test]
fn builtins_are_listed_sorted_by_name_then_kind_and_resolve() {
    let r = knapsec_builtin::registry().unwrap();
    let list = r.list();
    let keys: Vec<_> = list.iter().map(|p| (p.name.clone(), p.kind)).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for p in &list {
        assert!(matches!(p.source, PluginSource::Builtin(_)), "{p:?}");
        let found = match p.kind {
            PluginKind::Architecture => r.arch(&p.name).map(|a| a.name().to_string()),
            PluginKind::KnapsackStrategy => r.strategy(&p.name).map(|s| s.name().to_string()),
            PluginKind::SecureBackend => r.backend(&p.name).map(|b| b.name().to_string()),
        };
        assert_eq!(found.unwrap(), p.name);
    }
}

struct Named(&'static str);

impl ArchAdapter for Named {
    fn name(&self) -> &str {
        self.0
    }
    fn description(&self) -> &str {
        "test architecture"
    }
    fn layer_table(&self, _: &ArchOptions) -> knapsec_core::Result<LayerTable> {
        LayerTable::new(self.0, vec![ReluLayer::new("a", 1, 2, 2)])
    }
}

#[test]
fn duplicates_are_refused_naming_both_sources() {
    let mut r = Registry::empty();
    r.add_arch(
        Arc::new(Named("twin")),
        PluginSource::Builtin("crate-one".into()),
    )
    .unwrap();
    let e = r
        .add_arch(
            Arc::new(Named("twin")),
            PluginSource::Dynamic("libtwo.so".into()),
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("twin") && e.contains("crate-one") && e.contains("libtwo.so"),
        "{e}"
    );
    // Same name, other kind: allowed.
    assert!(r.arch("twin").is_ok());
    let e = r.arch("nope").err().unwrap().to_string();
    assert!(e.contains("nope") && e.contains("twin"), "{e}");
}

#[test]
fn plugin_set_filters_refuse_unknown_builtins() {
    let set = PluginSet {
        builtins: BuiltinFilter {
            include: None,
            exclude: vec!["knapsack-strategy:no-such-builtin".into()],
        },
        ..Default::default()
    };
    let e = set.registry().unwrap_err().to_string();
    assert!(
        e.contains("no-such-builtin") && e.contains("not a built-in"),
        "{e}"
    );
    // Excluding every built-in by name leaves none.
    let all = knapsec_builtin::registry().unwrap();
    let set = PluginSet {
        builtins: BuiltinFilter {
            include: Some(vec![]),
            exclude: vec![],
        },
        ..Default::default()
    };
    assert!(set.registry().unwrap().list().is_empty());
    if let Some(first) = all.list().first() {
        let set = PluginSet {
            builtins: BuiltinFilter {
                include: None,
                exclude: vec![format!("{}:{}", first.kind.as_str(), first.name)],
            },
            ..Default::default()
        };
        let kept = set.registry().unwrap().list();
        assert_eq!(kept.len() + 1, all.list().len());
        assert!(
            !kept
                .iter()
                .any(|p| p.name == first.name && p.kind == first.kind)
        );
    }
}
