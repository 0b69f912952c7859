//! knapsec-builtin: the facade that names every built-in plugin crate (DESIGN §4).
//!
//! Built-in plugins register themselves with `inventory::submit!` in their own crate. A crate
//! that nothing names is not linked, and its registrations vanish (toolchain notes §4), so
//! this crate names each one with `use x as _;`, each behind a cargo feature:
//!
//! | feature    | crates |
//! |------------|--------|
//! | `knapsack` | `knapsec-knapsack` (knapsack strategies) |
//! | `plain`    | `knapsec-plain` (cleartext fixed-point backend) |
//! | `securenn` | `knapsec-securenn` (3PC backend) |
//! | `fss`      | `knapsec-fss` (3PC backend, the helper deals FSS keys) |
//! | `archs`    | `knapsec-arch-resnet`, `knapsec-arch-mobilenet`, `knapsec-arch-deeplab` (tch-free descriptions) |
//! | `example-arch` | `knapsec-arch-example` (`example-tinycnn`, the template of docs/plugins.md's "Add an architecture") |
//! | `torch`    | the tch networks of those crates and `knapsec-nn` (needs libtorch) |
//!
//! Binaries and tests depend on this crate and call [`registry`] (every built-in linked in)
//! or [`registry_with`] (a [`PluginSet`]: filtered built-ins plus dynamic libraries).
//! Adding a built-in crate: add it as an optional dependency, to a feature, and one
//! `use` line below.

#[cfg(feature = "archs")]
use knapsec_arch_deeplab as _;
#[cfg(feature = "example-arch")]
use knapsec_arch_example as _;
#[cfg(feature = "archs")]
use knapsec_arch_mobilenet as _;
#[cfg(feature = "archs")]
use knapsec_arch_onnx as _;
#[cfg(feature = "archs")]
use knapsec_arch_resnet as _;
#[cfg(feature = "fss")]
use knapsec_fss as _;
#[cfg(feature = "knapsack")]
use knapsec_knapsack as _;
#[cfg(feature = "torch")]
use knapsec_nn as _;
#[cfg(feature = "plain")]
use knapsec_plain as _;
#[cfg(feature = "securenn")]
use knapsec_securenn as _;

use knapsec_core::{CoreError, Registry};
pub use knapsec_plugin_abi::{AbiError, PluginSet};

/// The names of the features this build was compiled with, in table order (for `--version`
/// style reports and tests that check what should be registered).
pub const ENABLED_FEATURES: &[&str] = &[
    #[cfg(feature = "knapsack")]
    "knapsack",
    #[cfg(feature = "plain")]
    "plain",
    #[cfg(feature = "securenn")]
    "securenn",
    #[cfg(feature = "fss")]
    "fss",
    #[cfg(feature = "archs")]
    "archs",
    #[cfg(feature = "example-arch")]
    "example-arch",
    #[cfg(feature = "torch")]
    "torch",
];

/// Every built-in plugin linked into this binary, sorted by name. Two built-ins of the same
/// kind and name are refused with an error naming both crates.
pub fn registry() -> Result<Registry, CoreError> {
    Registry::builtin()
}

/// The registry of a plugin set: the built-ins linked into this binary that the set keeps,
/// plus the plugins of the dynamic libraries it names (see [`PluginSet`]).
pub fn registry_with(set: &PluginSet) -> Result<Registry, AbiError> {
    set.registry()
}
