//! The plugin registry (DESIGN §4).
//!
//! Built-in plugins register at link time with `inventory::submit!` of an
//! [`ArchRegistration`], [`StrategyRegistration`] or [`BackendRegistration`]; the
//! `knapsec-builtin` facade names every built-in crate so that the linker keeps them.
//! Dynamically loaded plugins (`knapsec-plugin-abi`) are added with the `add_*` methods.
//! Entries are kept sorted by name; a second plugin of the same kind and name is refused with
//! an error that names both sources.

use crate::arch::ArchAdapter;
use crate::backend::SecureBackend;
use crate::error::{CoreError, Result};
use crate::knapsack::KnapsackStrategy;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Link-time registration of a plugin of kind `P` (a trait object): one of
/// [`ArchRegistration`], [`StrategyRegistration`], [`BackendRegistration`].
pub struct Registration<P: ?Sized + 'static> {
    /// Registry name.
    pub name: &'static str,
    /// The crate that registers it (shown by `plugins list`).
    pub provider: &'static str,
    /// Builds the plugin.
    pub make: fn() -> Arc<P>,
}

/// Link-time registration of an architecture adapter.
pub type ArchRegistration = Registration<dyn ArchAdapter>;
/// Link-time registration of a knapsack strategy.
pub type StrategyRegistration = Registration<dyn KnapsackStrategy>;
/// Link-time registration of a secure backend.
pub type BackendRegistration = Registration<dyn SecureBackend>;

/// Link-time registration of a source of architectures named `PREFIX:REST` (e.g.
/// `onnx:model.onnx`): wherever an architecture name is accepted, a name with this prefix is
/// loaded by `load(REST)` instead of looked up.
pub struct ArchSourceRegistration {
    /// The prefix before the colon, e.g. `"onnx"`.
    pub prefix: &'static str,
    /// The crate that registers it.
    pub provider: &'static str,
    /// Loads the architecture named `PREFIX:REST` from `REST`; the adapter's name is the
    /// whole name.
    pub load: fn(&str) -> Result<Arc<dyn ArchAdapter>>,
}

/// The registered source for an architecture name of the form `PREFIX:REST`, and `REST`.
pub fn arch_source(name: &str) -> Option<(&'static ArchSourceRegistration, &str)> {
    let (prefix, rest) = name.split_once(':')?;
    inventory::iter::<ArchSourceRegistration>
        .into_iter()
        .find(|r| r.prefix == prefix)
        .map(|r| (r, rest))
}

inventory::collect!(ArchRegistration);
inventory::collect!(ArchSourceRegistration);
inventory::collect!(StrategyRegistration);
inventory::collect!(BackendRegistration);

/// The three plugin kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Architecture adapters.
    Architecture,
    /// Knapsack strategies.
    KnapsackStrategy,
    /// Secure backends.
    SecureBackend,
}

impl PluginKind {
    /// The kind's name (`architecture`, `knapsack-strategy`, `secure-backend`).
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Architecture => "architecture",
            PluginKind::KnapsackStrategy => "knapsack-strategy",
            PluginKind::SecureBackend => "secure-backend",
        }
    }
}

/// Where a plugin comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "type", content = "from")]
pub enum PluginSource {
    /// Linked in; the crate name.
    Builtin(String),
    /// Loaded from a shared library; its path.
    Dynamic(String),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Builtin(c) => write!(f, "built-in crate {c}"),
            PluginSource::Dynamic(p) => write!(f, "library {p}"),
        }
    }
}

/// One row of `knapsec plugins list`.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    /// Its kind.
    pub kind: PluginKind,
    /// Its registry name.
    pub name: String,
    /// One line saying what it is.
    pub description: String,
    /// Where it comes from.
    pub source: PluginSource,
}

struct Entry<T: ?Sized> {
    plugin: Arc<T>,
    source: PluginSource,
}

/// The plugins available to one run.
#[derive(Default)]
pub struct Registry {
    archs: BTreeMap<String, Entry<dyn ArchAdapter>>,
    strategies: BTreeMap<String, Entry<dyn KnapsackStrategy>>,
    backends: BTreeMap<String, Entry<dyn SecureBackend>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.list()
                    .iter()
                    .map(|p| format!("{} {}", p.kind.as_str(), p.name)),
            )
            .finish()
    }
}

fn insert<T: ?Sized>(
    map: &mut BTreeMap<String, Entry<T>>,
    kind: PluginKind,
    name: &str,
    plugin: Arc<T>,
    source: PluginSource,
) -> Result<()> {
    if let Some(existing) = map.get(name) {
        return Err(CoreError::DuplicatePlugin {
            kind: kind.as_str(),
            name: name.to_string(),
            first: existing.source.to_string(),
            second: source.to_string(),
        });
    }
    map.insert(name.to_string(), Entry { plugin, source });
    Ok(())
}

fn lookup<T: ?Sized>(
    map: &BTreeMap<String, Entry<T>>,
    kind: PluginKind,
    name: &str,
) -> Result<Arc<T>> {
    map.get(name)
        .map(|e| e.plugin.clone())
        .ok_or_else(|| CoreError::NoSuchPlugin {
            kind: kind.as_str(),
            name: name.to_string(),
            available: if map.is_empty() {
                "none".into()
            } else {
                map.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry::default()
    }

    /// Every built-in plugin linked into this binary for which `keep(kind, name)` holds.
    /// Two built-ins with the same kind and name are an error naming both crates.
    pub fn builtin_filtered(keep: impl Fn(PluginKind, &str) -> bool) -> Result<Self> {
        let mut r = Registry::empty();
        for reg in inventory::iter::<ArchRegistration> {
            if keep(PluginKind::Architecture, reg.name) {
                r.add_arch((reg.make)(), PluginSource::Builtin(reg.provider.into()))?;
            }
        }
        for reg in inventory::iter::<StrategyRegistration> {
            if keep(PluginKind::KnapsackStrategy, reg.name) {
                r.add_strategy((reg.make)(), PluginSource::Builtin(reg.provider.into()))?;
            }
        }
        for reg in inventory::iter::<BackendRegistration> {
            if keep(PluginKind::SecureBackend, reg.name) {
                r.add_backend((reg.make)(), PluginSource::Builtin(reg.provider.into()))?;
            }
        }
        Ok(r)
    }

    /// Every built-in plugin linked into this binary.
    pub fn builtin() -> Result<Self> {
        Self::builtin_filtered(|_, _| true)
    }

    /// Adds an architecture, refusing a name already taken.
    pub fn add_arch(&mut self, plugin: Arc<dyn ArchAdapter>, source: PluginSource) -> Result<()> {
        let name = plugin.name().to_string();
        insert(
            &mut self.archs,
            PluginKind::Architecture,
            &name,
            plugin,
            source,
        )
    }

    /// Adds a knapsack strategy, refusing a name already taken.
    pub fn add_strategy(
        &mut self,
        plugin: Arc<dyn KnapsackStrategy>,
        source: PluginSource,
    ) -> Result<()> {
        let name = plugin.name().to_string();
        insert(
            &mut self.strategies,
            PluginKind::KnapsackStrategy,
            &name,
            plugin,
            source,
        )
    }

    /// Adds a secure backend, refusing a name already taken.
    pub fn add_backend(
        &mut self,
        plugin: Arc<dyn SecureBackend>,
        source: PluginSource,
    ) -> Result<()> {
        let name = plugin.name().to_string();
        insert(
            &mut self.backends,
            PluginKind::SecureBackend,
            &name,
            plugin,
            source,
        )
    }

    /// The architecture named `name`, or an error listing those there are.
    /// A name `PREFIX:REST` with a registered [`ArchSourceRegistration`] (e.g. `onnx:PATH`)
    /// is loaded from that source.
    pub fn arch(&self, name: &str) -> Result<Arc<dyn ArchAdapter>> {
        if !self.archs.contains_key(name)
            && let Some((source, rest)) = arch_source(name)
        {
            return (source.load)(rest);
        }
        lookup(&self.archs, PluginKind::Architecture, name)
    }

    /// The strategy named `name`, or an error listing those there are.
    pub fn strategy(&self, name: &str) -> Result<Arc<dyn KnapsackStrategy>> {
        lookup(&self.strategies, PluginKind::KnapsackStrategy, name)
    }

    /// The backend named `name`, or an error listing those there are.
    pub fn backend(&self, name: &str) -> Result<Arc<dyn SecureBackend>> {
        lookup(&self.backends, PluginKind::SecureBackend, name)
    }

    /// Names of the architectures, sorted.
    pub fn arch_names(&self) -> Vec<String> {
        self.archs.keys().cloned().collect()
    }

    /// Names of the strategies, sorted.
    pub fn strategy_names(&self) -> Vec<String> {
        self.strategies.keys().cloned().collect()
    }

    /// Names of the backends, sorted.
    pub fn backend_names(&self) -> Vec<String> {
        self.backends.keys().cloned().collect()
    }

    /// Every plugin, sorted by name, then kind.
    pub fn list(&self) -> Vec<PluginInfo> {
        let mut out: Vec<PluginInfo> = Vec::new();
        out.extend(self.archs.iter().map(|(n, e)| PluginInfo {
            kind: PluginKind::Architecture,
            name: n.clone(),
            description: e.plugin.description().to_string(),
            source: e.source.clone(),
        }));
        out.extend(self.strategies.iter().map(|(n, e)| PluginInfo {
            kind: PluginKind::KnapsackStrategy,
            name: n.clone(),
            description: e.plugin.description().to_string(),
            source: e.source.clone(),
        }));
        out.extend(self.backends.iter().map(|(n, e)| PluginInfo {
            kind: PluginKind::SecureBackend,
            name: n.clone(),
            description: e.plugin.description().to_string(),
            source: e.source.clone(),
        }));
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)));
        out
    }
}
