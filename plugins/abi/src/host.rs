//! The host side of the ABI: loading a plugin library and wrapping each of its plugins in a
//! type that implements the core trait (`ArchAdapter`, `KnapsackStrategy`), so that the rest
//! of knapsec cannot tell a dynamic plugin from a built-in one.
//!
//! Loading refuses, with an error naming the file: a missing file, a file that is not a
//! shared library, a library without the knapsec entry symbol, a library of another ABI
//! version (naming both versions), a library whose set-up failed. Calls refuse panics (with
//! the plugin's panic message) and malformed answers; answers are checked (a solution must
//! pick one valid option per class within the budget; a layer table must come with one
//! candidate list per layer). Libraries are never unloaded: function pointers into them live
//! in registries for the rest of the process.

// `unsafe` is allowed here only: loading libraries and calling through the C ABI. Every block says
// why it is sound.
#![allow(unsafe_code)]

use crate::error::AbiError;
use crate::ffi::{self, EntryFn, OutBuffer, PluginHeader, PluginLibrary};
use crate::wire::{self, Description, LayerTableAnswer, Request, WireError, WireLimits};
use knapsec_core::arch::{ArchAdapter, ArchOptions};
use knapsec_core::block::BlockSize;
use knapsec_core::knapsack::{
    KnapsackError, KnapsackStrategy, McKpProblem, McKpSolution, SolveLimits,
};
use knapsec_core::layer::{LayerTable, ReluLayer};
use knapsec_core::registry::{PluginKind, PluginSource, Registry};
use knapsec_core::{CoreError, candidates};
use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One plugin of a loaded library, with its `call` and `free`.
#[derive(Debug)]
struct Handle {
    path: PathBuf,
    name: String,
    version: String,
    description: String,
    ctx: *const c_void,
    call: ffi::CallFn,
    free: ffi::FreeFn,
}

// SAFETY: the library is never unloaded, so `ctx` and the function pointers stay valid; the
// plugin side serves calls from any thread (the core traits it implements are `Send + Sync`,
// which `declare_plugin!` requires).
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Handle {
    fn malformed(&self, message: impl std::fmt::Display) -> AbiError {
        AbiError::Malformed {
            path: self.path.clone(),
            plugin: self.name.clone(),
            message: message.to_string(),
        }
    }

    /// Sends one request; `Ok(Ok(answer))`, `Ok(Err(refusal))` or `Err` for a panic or a
    /// broken answer.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: &Request,
    ) -> Result<Result<T, WireError>, AbiError> {
        let bytes = wire::encode(request)
            .map_err(|e| self.malformed(format!("cannot serialise request: {e}")))?;
        let mut out = OutBuffer::EMPTY;
        // SAFETY: `ctx`, `call` come from the library's header; `bytes` outlives the call;
        // `out` is a valid, writable buffer.
        let status = unsafe { (self.call)(self.ctx, bytes.as_ptr(), bytes.len(), &mut out) };
        let answer: Vec<u8> = if out.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `len` bytes at `ptr`; we copy them before freeing.
            let copy = unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec();
            // SAFETY: the buffer came from this plugin's `call` and is freed once.
            unsafe { (self.free)(out) };
            copy
        };
        match status {
            ffi::STATUS_OK => wire::decode(&answer).map(Ok).map_err(|e| self.malformed(e)),
            ffi::STATUS_ERROR => wire::decode::<WireError>(&answer)
                .map(Err)
                .map_err(|e| self.malformed(format!("unreadable error report: {e}"))),
            ffi::STATUS_PANIC => Err(AbiError::Panic {
                path: self.path.clone(),
                plugin: self.name.clone(),
                message: String::from_utf8_lossy(&answer).into_owned(),
            }),
            other => Err(self.malformed(format!("unknown status {other}"))),
        }
    }

    /// A call whose refusal is also an error.
    fn call_ok<T: serde::de::DeserializeOwned>(&self, request: &Request) -> Result<T, AbiError> {
        self.call(request)?.map_err(|refusal| AbiError::Refused {
            path: self.path.clone(),
            plugin: self.name.clone(),
            message: refusal.message,
        })
    }
}

/// An architecture description served by a plugin library.
#[derive(Debug)]
pub struct DynamicArch {
    handle: Handle,
    /// Candidates the plugin sent with its layer tables, by layer name and shape.
    candidates: Mutex<HashMap<LayerKey, Vec<BlockSize>>>,
}

/// A layer by name and shape.
type LayerKey = (String, u32, u32, u32);

fn layer_key(l: &ReluLayer) -> LayerKey {
    (l.name.clone(), l.channels, l.height, l.width)
}

impl DynamicArch {
    /// The library this plugin came from.
    pub fn path(&self) -> &Path {
        &self.handle.path
    }

    /// The plugin's own version string.
    pub fn version(&self) -> &str {
        &self.handle.version
    }

    /// [`ArchAdapter::layer_table`] with the ABI's error type.
    pub fn try_layer_table(&self, options: &ArchOptions) -> Result<LayerTable, AbiError> {
        let answer: LayerTableAnswer = self.handle.call_ok(&Request::LayerTable {
            options: options.clone(),
        })?;
        let LayerTableAnswer { table, candidates } = answer;
        if candidates.len() != table.layers.len() {
            return Err(self.handle.malformed(format!(
                "{} candidate lists for {} layers",
                candidates.len(),
                table.layers.len()
            )));
        }
        // The plugin's table must pass the same checks as a built-in one.
        let table =
            LayerTable::new(table.arch, table.layers).map_err(|e| self.handle.malformed(e))?;
        let mut cache = self.candidates.lock().unwrap_or_else(|p| p.into_inner());
        for (layer, list) in table.layers.iter().zip(candidates) {
            cache.insert(layer_key(layer), list);
        }
        Ok(table)
    }

    /// [`ArchAdapter::candidates`] with the ABI's error type.
    pub fn try_candidates(&self, layer: &ReluLayer) -> Result<Vec<BlockSize>, AbiError> {
        if let Some(list) = self
            .candidates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&layer_key(layer))
        {
            return Ok(list.clone());
        }
        self.handle.call_ok(&Request::Candidates {
            layer: layer.clone(),
        })
    }
}

impl ArchAdapter for DynamicArch {
    fn name(&self) -> &str {
        &self.handle.name
    }

    fn description(&self) -> &str {
        &self.handle.description
    }

    fn layer_table(&self, options: &ArchOptions) -> knapsec_core::Result<LayerTable> {
        self.try_layer_table(options)
            .map_err(|e| CoreError::Invalid(e.to_string()))
    }

    /// The candidates the plugin sent with the layer's table. For a layer that no table
    /// call has shown, the plugin is asked; if that fails (a trait method without an error
    /// path), the failure is logged and the default generated set is used.
    fn candidates(&self, layer: &ReluLayer) -> Vec<BlockSize> {
        match self.try_candidates(layer) {
            Ok(list) => list,
            Err(e) => {
                tracing::error!(
                    "{e}; using the default candidate set for layer {:?}",
                    layer.name
                );
                candidates::generate(layer.height, layer.width, 16)
            }
        }
    }
}

/// A knapsack strategy served by a plugin library.
#[derive(Debug)]
pub struct DynamicStrategy {
    handle: Handle,
}

impl DynamicStrategy {
    /// The library this plugin came from.
    pub fn path(&self) -> &Path {
        &self.handle.path
    }

    /// The plugin's own version string.
    pub fn version(&self) -> &str {
        &self.handle.version
    }

    /// Checks that a solution answers `problem`: one valid option per class, the reported
    /// cost is the true cost, within the budget.
    fn check(&self, problem: &McKpProblem, s: &McKpSolution) -> Result<(), String> {
        if s.choice.len() != problem.classes() {
            return Err(format!(
                "{} choices for {} classes",
                s.choice.len(),
                problem.classes()
            ));
        }
        for (i, &k) in s.choice.iter().enumerate() {
            let n = problem.class(i).0.len();
            if k >= n {
                return Err(format!("class {i}: option {k} chosen, the class has {n}"));
            }
        }
        let (cost, _) = problem.evaluate(&s.choice);
        if cost != s.cost {
            return Err(format!(
                "reported cost {} but the choice costs {cost}",
                s.cost
            ));
        }
        if cost > problem.budget {
            return Err(format!(
                "the choice costs {cost}, over the budget of {}",
                problem.budget
            ));
        }
        Ok(())
    }
}

impl KnapsackStrategy for DynamicStrategy {
    fn name(&self) -> &str {
        &self.handle.name
    }

    fn description(&self) -> &str {
        &self.handle.description
    }

    fn solve(
        &self,
        problem: &McKpProblem,
        limits: &SolveLimits,
    ) -> Result<McKpSolution, KnapsackError> {
        let strategy = || self.handle.name.clone();
        let request = Request::Solve {
            problem: problem.clone(),
            limits: WireLimits::from(limits),
        };
        match self.handle.call::<McKpSolution>(&request) {
            Ok(Ok(solution)) => {
                self.check(problem, &solution)
                    .map_err(|message| KnapsackError::Strategy {
                        strategy: strategy(),
                        message: format!(
                            "malformed answer from {}: {message}",
                            self.handle.path.display()
                        ),
                    })?;
                Ok(solution)
            }
            Ok(Err(refusal)) => Err(refusal.into_knapsack(&self.handle.name)),
            Err(e) => Err(KnapsackError::Strategy {
                strategy: strategy(),
                message: e.to_string(),
            }),
        }
    }
}

/// A plugin of a loaded library.
#[derive(Clone, Debug)]
pub enum DynamicPlugin {
    /// An architecture.
    Arch(Arc<DynamicArch>),
    /// A knapsack strategy.
    Strategy(Arc<DynamicStrategy>),
}

impl DynamicPlugin {
    /// Registry name.
    pub fn name(&self) -> &str {
        match self {
            DynamicPlugin::Arch(a) => &a.handle.name,
            DynamicPlugin::Strategy(s) => &s.handle.name,
        }
    }

    /// The plugin kind.
    pub fn kind(&self) -> PluginKind {
        match self {
            DynamicPlugin::Arch(_) => PluginKind::Architecture,
            DynamicPlugin::Strategy(_) => PluginKind::KnapsackStrategy,
        }
    }
}

fn text(path: &Path, what: &str, s: ffi::StrRef) -> Result<String, AbiError> {
    // SAFETY: strings in a library's headers live as long as the library, which is never
    // unloaded.
    let bytes = unsafe { s.as_bytes() };
    String::from_utf8(bytes.to_vec()).map_err(|_| AbiError::Malformed {
        path: path.into(),
        plugin: "?".into(),
        message: format!("{what} is not UTF-8"),
    })
}

/// Loads a plugin library and returns its plugins (not yet registered). Each plugin is asked
/// to describe itself once, so that a library that cannot answer is refused here.
pub fn load_library(path: &Path) -> Result<Vec<DynamicPlugin>, AbiError> {
    if !path.is_file() {
        return Err(AbiError::NotFound { path: path.into() });
    }
    // SAFETY: loading a library runs its initialisers; the user asked for this library.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| AbiError::NotALibrary {
        path: path.into(),
        message: dl_message(&e),
    })?;
    // Never unloaded: function pointers into it end up in registries.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    // SAFETY: the symbol's type is fixed by the ABI (`EntryFn`).
    let entry: EntryFn = unsafe { library.get::<EntryFn>(ffi::ENTRY_SYMBOL) }
        .map(|s| *s)
        .map_err(|_| AbiError::NoEntry {
            path: path.into(),
            symbol: "knapsec_plugins".into(),
        })?;
    // SAFETY: an entry function of the ABI; it catches its own panics.
    let lib: *const PluginLibrary = unsafe { entry() };
    if lib.is_null() {
        return Err(AbiError::InitFailed {
            path: path.into(),
            message: "the entry point returned null".into(),
        });
    }
    // Read only the version field first: its place is fixed in every ABI version.
    // SAFETY: `lib` points to a live `PluginLibrary` whose first field is the `u32` version.
    let found = unsafe { std::ptr::addr_of!((*lib).abi_version).read() };
    if found != ffi::ABI_VERSION {
        return Err(AbiError::WrongAbi {
            path: path.into(),
            found,
            supported: ffi::ABI_VERSION,
        });
    }
    // SAFETY: same version, so the layout is ours.
    let lib: &PluginLibrary = unsafe { &*lib };
    let error = text(path, "the library's error", lib.error)?;
    if !error.is_empty() {
        return Err(AbiError::InitFailed {
            path: path.into(),
            message: error,
        });
    }
    let headers: &[PluginHeader] = if lib.count == 0 || lib.plugins.is_null() {
        &[]
    } else {
        // SAFETY: the library declares `count` headers at `plugins`, alive for ever.
        unsafe { std::slice::from_raw_parts(lib.plugins, lib.count) }
    };
    let mut out = Vec::with_capacity(headers.len());
    for h in headers {
        let handle = Handle {
            path: path.into(),
            name: text(path, "a plugin name", h.name)?,
            version: text(path, "a plugin version", h.version)?,
            description: text(path, "a plugin description", h.description)?,
            ctx: h.ctx,
            call: h.call,
            free: h.free,
        };
        if handle.name.is_empty() {
            return Err(handle.malformed("empty plugin name"));
        }
        let expected_kind = match h.kind {
            ffi::KIND_ARCHITECTURE => "architecture",
            ffi::KIND_KNAPSACK_STRATEGY => "knapsack-strategy",
            other => return Err(handle.malformed(format!("unknown plugin kind {other}"))),
        };
        let description: Description = handle.call_ok(&Request::Describe)?;
        if description.name != handle.name || description.kind != expected_kind {
            return Err(handle.malformed(format!(
                "describes itself as {} {:?}, its header says {} {:?}",
                description.kind, description.name, expected_kind, handle.name
            )));
        }
        out.push(match h.kind {
            ffi::KIND_ARCHITECTURE => DynamicPlugin::Arch(Arc::new(DynamicArch {
                handle,
                candidates: Mutex::default(),
            })),
            _ => DynamicPlugin::Strategy(Arc::new(DynamicStrategy { handle })),
        });
    }
    Ok(out)
}

/// Loads a library and adds its plugins to `registry` with [`PluginSource::Dynamic`]; a name
/// already taken is refused with an error naming both sources. Returns the plugins added.
pub fn load_into(registry: &mut Registry, path: &Path) -> Result<Vec<DynamicPlugin>, AbiError> {
    let plugins = load_library(path)?;
    let source = PluginSource::Dynamic(path.display().to_string());
    for p in &plugins {
        match p {
            DynamicPlugin::Arch(a) => registry.add_arch(a.clone(), source.clone())?,
            DynamicPlugin::Strategy(s) => registry.add_strategy(s.clone(), source.clone())?,
        }
    }
    Ok(plugins)
}

/// The first line of a loader error, without libloading's prefix.
fn dl_message(e: &libloading::Error) -> String {
    let full = std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_else(|| e.to_string());
    full.lines().next().unwrap_or_default().to_string()
}
