//! knapsec-plugin-abi: dynamic plugins through a bytes-only C ABI (DESIGN §4).
//!
//! * [`ffi`]: the `#[repr(C)]` header a library exports through one symbol,
//!   `knapsec_plugins`, with its ABI version first.
//! * [`wire`]: the requests and answers (RON text) (`describe`, `layer_table`, `candidates`,
//!   `solve`).
//! * [`guest`] and [`declare_plugin!`]: the plugin side. An author implements the core
//!   traits (`ArchAdapter`, `KnapsackStrategy`) and names the values in `declare_plugin!`;
//!   `plugins/example` is a complete, commented template.
//! * [`host`]: the loader. It wraps each plugin of a library in a type implementing the core
//!   trait and adds it to a [`knapsec_core::Registry`] with `PluginSource::Dynamic(path)`.
//! * [`set`]: plugin sets (`--plugin`, `--plugins FILE`, `KNAPSEC_PLUGIN_PATH`).
//!
//! Only bytes cross the boundary, never Rust types (Rust's ABI is not stable across
//! compilers); every plugin entry point catches panics and reports them as errors; libraries
//! are never unloaded; a library built for another ABI version is refused naming both
//! versions.

pub mod error;
pub mod ffi;
pub mod guest;
pub mod host;
pub mod set;
pub mod wire;

pub use error::AbiError;
pub use ffi::ABI_VERSION;
pub use host::{DynamicArch, DynamicPlugin, DynamicStrategy, load_into, load_library};
pub use set::{BuiltinFilter, PluginSet};
