//! Plugin sets: which plugins one run sees (built-ins, filtered, plus dynamic libraries).
//!
//! A plugin set comes from command-line flags (`--plugin PATH`, `--plugins FILE`), the
//! `KNAPSEC_PLUGIN_PATH` folders, or a RON file:
//!
//! ```ron
//! (
//!     // Shared libraries to load; relative paths are relative to this file's folder.
//!     load: ["target/release/libknapsec_example_plugin.so"],
//!     // Folders whose every shared library (.so on Linux) is loaded, in name order.
//!     dirs: ["plugins.d"],
//!     // Built-ins: `include` keeps only the named ones (absent: all), `exclude` leaves out
//!     // the named ones. A name is `NAME` (any kind) or `KIND:NAME`, with KIND one of
//!     // architecture, knapsack-strategy, secure-backend.
//!     builtins: (include: None, exclude: ["knapsack-strategy:uniform"]),
//! )
//! ```
//!
//! Every field is optional. A name in `include`/`exclude` that no built-in has is an error
//! (a typo would otherwise silently keep or drop plugins), and so is a library or folder
//! that does not exist.

use crate::error::AbiError;
use crate::host;
use knapsec_core::registry::{PluginKind, Registry};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The plugins of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSet {
    /// Shared libraries to load.
    pub load: Vec<PathBuf>,
    /// Folders whose every shared library is loaded.
    pub dirs: Vec<PathBuf>,
    /// Which built-ins to keep.
    pub builtins: BuiltinFilter,
}

/// Which built-in plugins a [`PluginSet`] keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuiltinFilter {
    /// Keep only these (`None`: keep all).
    pub include: Option<Vec<String>>,
    /// Leave these out.
    pub exclude: Vec<String>,
}

/// A parsed `NAME` or `KIND:NAME`.
fn parse_selector(text: &str) -> Result<(Option<PluginKind>, &str), String> {
    match text.split_once(':') {
        None => Ok((None, text)),
        Some((kind, name)) => {
            let kind = match kind {
                "architecture" => PluginKind::Architecture,
                "knapsack-strategy" => PluginKind::KnapsackStrategy,
                "secure-backend" => PluginKind::SecureBackend,
                other => {
                    return Err(format!(
                        "unknown plugin kind {other:?} in {text:?} (expected architecture, knapsack-strategy or secure-backend)"
                    ));
                }
            };
            Ok((Some(kind), name))
        }
    }
}

fn matches(selector: &str, kind: PluginKind, name: &str) -> bool {
    match parse_selector(selector) {
        Ok((k, n)) => n == name && k.is_none_or(|k| k == kind),
        Err(_) => false,
    }
}

impl BuiltinFilter {
    /// Whether the built-in `kind` `name` is kept.
    pub fn keeps(&self, kind: PluginKind, name: &str) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| matches(s, kind, name)));
        included && !self.exclude.iter().any(|s| matches(s, kind, name))
    }

    /// Refuses selectors that name no built-in of `all`.
    fn check(&self, all: &Registry) -> Result<(), String> {
        let plugins = all.list();
        for (field, list) in [
            ("include", self.include.as_deref().unwrap_or_default()),
            ("exclude", &self.exclude[..]),
        ] {
            for s in list {
                parse_selector(s)?;
                if !plugins.iter().any(|p| matches(s, p.kind, &p.name)) {
                    let names: Vec<_> = plugins.iter().map(|p| p.name.as_str()).collect();
                    return Err(format!(
                        "builtins.{field} names {s:?}, which is not a built-in plugin (built-ins: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(())
    }
}

impl PluginSet {
    /// Reads a plugin-set file (RON); relative paths in it are taken relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self, AbiError> {
        let text = std::fs::read_to_string(path).map_err(|e| AbiError::PluginSet {
            path: path.into(),
            message: e.to_string(),
        })?;
        let mut set: PluginSet = ron::from_str(&text).map_err(|e| AbiError::PluginSet {
            path: path.into(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in set.load.iter_mut().chain(set.dirs.iter_mut()) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for s in set
            .builtins
            .include
            .iter()
            .flatten()
            .chain(&set.builtins.exclude)
        {
            parse_selector(s).map_err(|message| AbiError::PluginSet {
                path: path.into(),
                message,
            })?;
        }
        Ok(set)
    }

    /// Adds everything of `other` to this set (libraries and folders appended; built-in
    /// filters combined: both `include` lists must admit a plugin, either `exclude` drops it).
    pub fn merge(&mut self, other: PluginSet) {
        self.load.extend(other.load);
        self.dirs.extend(other.dirs);
        self.builtins.exclude.extend(other.builtins.exclude);
        self.builtins.include = match (self.builtins.include.take(), other.builtins.include) {
            (Some(a), Some(b)) => Some(a.into_iter().filter(|s| b.contains(s)).collect()),
            (a, b) => a.or(b),
        };
    }

    /// The libraries this set loads: `load` in order, then each folder's shared libraries in
    /// name order; a library named twice is loaded once.
    pub fn libraries(&self) -> Result<Vec<PathBuf>, AbiError> {
        let mut out: Vec<PathBuf> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut push = |p: PathBuf| {
            let key = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
            if seen.insert(key) {
                out.push(p);
            }
        };
        for p in &self.load {
            push(p.clone());
        }
        for dir in &self.dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| AbiError::Folder {
                path: dir.clone(),
                source: e,
            })?;
            let mut libs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .is_some_and(|x| x == std::env::consts::DLL_EXTENSION)
                })
                .collect();
            libs.sort();
            for p in libs {
                push(p);
            }
        }
        Ok(out)
    }

    /// The registry of this set: the built-ins linked into this binary that the filter keeps,
    /// then every library's plugins. A plugin name taken twice is refused naming both sources.
    pub fn registry(&self) -> Result<Registry, AbiError> {
        let all = Registry::builtin()?;
        self.builtins
            .check(&all)
            .map_err(|message| AbiError::PluginSet {
                path: PathBuf::from("(built-in filter)"),
                message,
            })?;
        let mut registry =
            Registry::builtin_filtered(|kind, name| self.builtins.keeps(kind, name))?;
        for lib in self.libraries()? {
            host::load_into(&mut registry, &lib)?;
        }
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_by_name_and_kind() {
        let f = BuiltinFilter {
            include: None,
            exclude: vec!["knapsack-strategy:uniform".into(), "resnet18".into()],
        };
        assert!(!f.keeps(PluginKind::KnapsackStrategy, "uniform"));
        assert!(f.keeps(PluginKind::Architecture, "uniform"));
        assert!(!f.keeps(PluginKind::Architecture, "resnet18"));
        assert!(f.keeps(PluginKind::Architecture, "resnet50"));
        let f = BuiltinFilter {
            include: Some(vec!["a".into()]),
            exclude: vec![],
        };
        assert!(f.keeps(PluginKind::SecureBackend, "a"));
        assert!(!f.keeps(PluginKind::SecureBackend, "b"));
    }

    #[test]
    fn file_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("set.ron");
        std::fs::write(
            &file,
            r#"(load: ["libx.so", "/abs/liby.so"], builtins: (exclude: ["uniform"]))"#,
        )
        .unwrap();
        let set = PluginSet::from_file(&file).unwrap();
        assert_eq!(
            set.load,
            vec![dir.path().join("libx.so"), PathBuf::from("/abs/liby.so")]
        );
        assert_eq!(set.builtins.exclude, vec!["uniform".to_string()]);
        assert!(set.dirs.is_empty() && set.builtins.include.is_none());
    }

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("set.ron");
        std::fs::write(&file, r#"(lod: [])"#).unwrap();
        let e = PluginSet::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("set.ron") && e.contains("lod"), "{e}");
        std::fs::write(&file, r#"(builtins: (exclude: ["strategy:uniform"]))"#).unwrap();
        let e = PluginSet::from_file(&file).unwrap_err().to_string();
        assert!(e.contains("unknown plugin kind \"strategy\""), "{e}");
        let e = PluginSet::from_file(&dir.path().join("missing.ron"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.ron"), "{e}");
    }

    #[test]
    fn folders_list_shared_libraries_once_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let ext = std::env::consts::DLL_EXTENSION;
        for n in ["b", "a", "c"] {
            std::fs::write(dir.path().join(format!("lib{n}.{ext}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let set = PluginSet {
            load: vec![dir.path().join(format!("libc.{ext}"))],
            dirs: vec![dir.path().into()],
            builtins: BuiltinFilter::default(),
        };
        let names: Vec<_> = set
            .libraries()
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                format!("libc.{ext}"),
                format!("liba.{ext}"),
                format!("libb.{ext}")
            ]
        );
        let missing = PluginSet {
            dirs: vec![dir.path().join("nope")],
            ..Default::default()
        };
        assert!(matches!(missing.libraries(), Err(AbiError::Folder { .. })));
    }

    #[test]
    fn merge_combines_filters() {
        let mut a = PluginSet {
            load: vec!["x".into()],
            builtins: BuiltinFilter {
                include: Some(vec!["p".into(), "q".into()]),
                exclude: vec!["r".into()],
            },
            ..Default::default()
        };
        a.merge(PluginSet {
            load: vec!["y".into()],
            builtins: BuiltinFilter {
                include: Some(vec!["q".into()]),
                exclude: vec!["s".into()],
            },
            ..Default::default()
        });
        assert_eq!(a.load, [PathBuf::from("x"), PathBuf::from("y")]);
        assert_eq!(a.builtins.include, Some(vec!["q".to_string()]));
        assert_eq!(a.builtins.exclude, ["r".to_string(), "s".to_string()]);
    }
}
