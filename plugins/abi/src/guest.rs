//! The plugin side of the ABI: what [`crate::declare_plugin!`] expands to.
//!
//! A plugin author implements the core traits (`ArchAdapter`, `KnapsackStrategy`) exactly as
//! a built-in would, and names the values in `declare_plugin!`. This module turns them into
//! [`crate::ffi`] headers: it serves each [`crate::wire::Request`] by calling the trait, and
//! catches every panic, which it reports with [`crate::ffi::STATUS_PANIC`] (a panic must not
//! unwind across `extern "C"`: since Rust 1.81 that aborts the process).

// `unsafe` is allowed here only: the plugin side of the C ABI. Every block says why it is sound.
#![allow(unsafe_code)]

use crate::ffi::{self, OutBuffer, PluginHeader, PluginLibrary, StrRef};
use crate::wire::{self, Description, LayerTableAnswer, Request, WireError, WireLimits};
use knapsec_core::arch::ArchAdapter;
use knapsec_core::knapsack::{KnapsackStrategy, SolveLimits};
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::Once;

/// One plugin value of a library.
pub enum GuestPlugin {
    /// An architecture.
    Arch(Arc<dyn ArchAdapter>),
    /// A knapsack strategy.
    Strategy(Arc<dyn KnapsackStrategy>),
}

impl GuestPlugin {
    /// Wraps an architecture description.
    pub fn arch(a: impl ArchAdapter + 'static) -> Self {
        GuestPlugin::Arch(Arc::new(a))
    }

    /// Wraps a knapsack strategy.
    pub fn strategy(s: impl KnapsackStrategy + 'static) -> Self {
        GuestPlugin::Strategy(Arc::new(s))
    }

    fn name(&self) -> &str {
        match self {
            GuestPlugin::Arch(a) => a.name(),
            GuestPlugin::Strategy(s) => s.name(),
        }
    }

    fn description(&self) -> &str {
        match self {
            GuestPlugin::Arch(a) => a.description(),
            GuestPlugin::Strategy(s) => s.description(),
        }
    }

    fn kind(&self) -> (u32, &'static str) {
        match self {
            GuestPlugin::Arch(_) => (ffi::KIND_ARCHITECTURE, "architecture"),
            GuestPlugin::Strategy(_) => (ffi::KIND_KNAPSACK_STRATEGY, "knapsack-strategy"),
        }
    }
}

struct Slot {
    plugin: GuestPlugin,
    name: String,
    description: String,
    version: String,
}

/// Everything a library hands out; built once, kept for the life of the process.
pub struct GuestLibrary {
    // The headers and `ffi` point into the heap buffers of `slots`, `error` and `headers`,
    // which are never changed after `build_with_abi` (moving a Vec or String does not move
    // its buffer).
    slots: Vec<Slot>,
    headers: Vec<PluginHeader>,
    error: String,
    ffi: PluginLibrary,
}

// SAFETY: a GuestLibrary is immutable once built; its raw pointers point into its own heap
// data, and the plugin values are `Send + Sync` by the core traits' bounds.
unsafe impl Send for GuestLibrary {}
// SAFETY: as above.
unsafe impl Sync for GuestLibrary {}

impl GuestLibrary {
    /// Builds the library from a constructor of its plugins; a panic in `make` becomes the
    /// library's initialisation error.
    pub fn build(version: &str, make: impl FnOnce() -> Vec<GuestPlugin>) -> Self {
        Self::build_with_abi(ffi::ABI_VERSION, version, make)
    }

    /// Like [`GuestLibrary::build`] but announcing another ABI version. Only for testing how
    /// hosts refuse libraries of other versions.
    #[doc(hidden)]
    pub fn build_with_abi(
        abi_version: u32,
        version: &str,
        make: impl FnOnce() -> Vec<GuestPlugin>,
    ) -> Self {
        let build_slots = || -> Vec<Slot> {
            make()
                .into_iter()
                .map(|plugin| Slot {
                    name: plugin.name().to_string(),
                    description: plugin.description().to_string(),
                    version: version.to_string(),
                    plugin,
                })
                .collect()
        };
        let (slots, error) = match catch_panic(build_slots) {
            Ok(s) => (s, String::new()),
            Err(message) => (
                Vec::new(),
                format!("a plugin constructor panicked: {message}"),
            ),
        };
        let headers = slots
            .iter()
            .map(|slot| PluginHeader {
                kind: slot.plugin.kind().0,
                name: StrRef::new(&slot.name),
                version: StrRef::new(&slot.version),
                description: StrRef::new(&slot.description),
                ctx: (slot as *const Slot).cast::<c_void>(),
                call: guest_call,
                free: guest_free,
            })
            .collect::<Vec<_>>();
        let mut lib = GuestLibrary {
            slots,
            headers,
            error,
            ffi: PluginLibrary {
                abi_version,
                count: 0,
                plugins: std::ptr::null(),
                error: StrRef::EMPTY,
            },
        };
        lib.ffi = PluginLibrary {
            abi_version,
            count: lib.headers.len(),
            plugins: lib.headers.as_ptr(),
            error: StrRef::new(&lib.error),
        };
        lib
    }

    /// The pointer the entry symbol returns. Valid while `self` lives (a `static` in practice).
    pub fn as_ffi(&'static self) -> *const PluginLibrary {
        debug_assert_eq!(self.slots.len(), self.headers.len());
        &self.ffi
    }
}

thread_local! {
    /// How many [`catch_panic`] calls are active on this thread.
    static CAPTURING: Cell<u32> = const { Cell::new(0) };
    /// The message and location of the last panic captured on this thread.
    static CAPTURED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that, inside [`catch_panic`], records the panic instead of
/// printing it, and otherwise defers to the hook that was there before.
fn install_capturing_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) > 0 {
                let location = info
                    .location()
                    .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                    .unwrap_or_default();
                let text = format!("{}{location}", panic_message(info.payload()));
                CAPTURED.with(|c| *c.borrow_mut() = Some(text));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs `f`, catching a panic: `Err` holds the panic's message and location. The panic is
/// not printed (knapsec reports it as a one-line error). Every function a plugin exports
/// must run its work inside this (or `catch_unwind`): a panic may not unwind into the host.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_capturing_hook();
    CAPTURING.with(|c| c.set(c.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    CAPTURING.with(|c| c.set(c.get() - 1));
    result.map_err(|payload| {
        CAPTURED
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| panic_message(&*payload))
    })
}

/// Best-effort text of a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

fn to_wire<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, WireError> {
    wire::encode(v).map_err(|e| WireError::new(format!("cannot serialise the answer: {e}")))
}

fn serve(slot: &Slot, request: &[u8]) -> Result<Vec<u8>, WireError> {
    let request: Request =
        wire::decode(request).map_err(|e| WireError::new(format!("malformed request: {e}")))?;
    match (&slot.plugin, request) {
        (plugin, Request::Describe) => to_wire(&Description {
            kind: plugin.kind().1.to_string(),
            name: slot.name.clone(),
            version: slot.version.clone(),
            description: slot.description.clone(),
        }),
        (GuestPlugin::Arch(a), Request::LayerTable { options }) => {
            let table = a
                .layer_table(&options)
                .map_err(|e| WireError::new(e.to_string()))?;
            let candidates = table.layers.iter().map(|l| a.candidates(l)).collect();
            to_wire(&LayerTableAnswer { table, candidates })
        }
        (GuestPlugin::Arch(a), Request::Candidates { layer }) => to_wire(&a.candidates(&layer)),
        (GuestPlugin::Strategy(s), Request::Solve { problem, limits }) => {
            let limits: SolveLimits = SolveLimits::from(&limits as &WireLimits);
            let solution = s
                .solve(&problem, &limits)
                .map_err(|e| WireError::from_knapsack(&e))?;
            to_wire(&solution)
        }
        (plugin, other) => Err(WireError::new(format!(
            "a {} plugin does not answer `{}` requests",
            plugin.kind().1,
            other.op()
        ))),
    }
}

fn into_buffer(bytes: Vec<u8>) -> OutBuffer {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    OutBuffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        cap: bytes.capacity(),
    }
}

/// The `call` of every header this module builds.
unsafe extern "C" fn guest_call(
    ctx: *const c_void,
    request: *const u8,
    request_len: usize,
    out: *mut OutBuffer,
) -> i32 {
    let result = catch_panic(|| {
        // SAFETY: `ctx` is the `Slot` this header was built with (see `build_with_abi`).
        let slot = unsafe { &*ctx.cast::<Slot>() };
        let request = if request.is_null() {
            &[][..]
        } else {
            // SAFETY: the host passes `request_len` readable bytes at `request` (not null).
            unsafe { std::slice::from_raw_parts(request, request_len) }
        };
        serve(slot, request)
    });
    let (status, bytes) = match result {
        Ok(Ok(answer)) => (ffi::STATUS_OK, answer),
        Ok(Err(refusal)) => (
            ffi::STATUS_ERROR,
            wire::encode(&refusal).unwrap_or_else(|_| b"(message: \"(unprintable)\")".to_vec()),
        ),
        Err(message) => (ffi::STATUS_PANIC, message.into_bytes()),
    };
    if out.is_null() {
        return ffi::STATUS_ERROR;
    }
    // SAFETY: the host passes a writable `OutBuffer`.
    unsafe { out.write(into_buffer(bytes)) };
    status
}

/// The `free` of every header this module builds.
unsafe extern "C" fn guest_free(buffer: OutBuffer) {
    if !buffer.ptr.is_null() {
        // SAFETY: the buffer came from `into_buffer` in this library.
        drop(unsafe { Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.cap) });
    }
}

/// Declares the plugins of a dynamic library (`crate-type = ["cdylib"]`).
///
/// ```ignore
/// knapsec_plugin_abi::declare_plugin! {
///     version: env!("CARGO_PKG_VERSION"),
///     archs: [TinyNet],
///     strategies: [RatioGreedy::default()],
/// }
/// ```
///
/// `archs` lists values implementing `knapsec_core::ArchAdapter`, `strategies` values
/// implementing `knapsec_core::KnapsackStrategy` (either list may be empty). The values are
/// built once, on the first call of the exported entry point; a panic while building them is
/// reported to the host as an initialisation error. This expands to the exported
/// `knapsec_plugins` symbol, so a library declares its plugins once.
#[macro_export]
macro_rules! declare_plugin {
    (
        version: $version:expr,
        archs: [$($arch:expr),* $(,)?],
        strategies: [$($strategy:expr),* $(,)?] $(,)?
    ) => {
        $crate::declare_plugin!(@abi $crate::ffi::ABI_VERSION, $version, [$($arch),*], [$($strategy),*]);
    };
    (@abi $abi:expr, $version:expr, [$($arch:expr),*], [$($strategy:expr),*]) => {
        /// The knapsec plugin entry point (see `knapsec_plugin_abi::ffi`).
        // Exported under its own name, which the host looks up; nothing else is unsafe here.
        #[allow(unsafe_code)]
        #[unsafe(no_mangle)]
        pub extern "C" fn knapsec_plugins() -> *const $crate::ffi::PluginLibrary {
            static LIBRARY: ::std::sync::OnceLock<$crate::guest::GuestLibrary> = ::std::sync::OnceLock::new();
            LIBRARY
                .get_or_init(|| {
                    $crate::guest::GuestLibrary::build_with_abi($abi, $version, || {
                        #[allow(unused_mut)]
                        let mut plugins: ::std::vec::Vec<$crate::guest::GuestPlugin> = ::std::vec::Vec::new();
                        $(plugins.push($crate::guest::GuestPlugin::arch($arch));)*
                        $(plugins.push($crate::guest::GuestPlugin::strategy($strategy));)*
                        plugins
                    })
                })
                .as_ffi()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_caught_with_message_and_location_and_not_printed() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let e = catch_panic(|| -> u32 { panic!("boom {}", 42) }).unwrap_err();
        assert!(
            e.starts_with("boom 42 (at ") && e.contains("guest.rs"),
            "{e}"
        );
        // Nested: the inner panic is reported by the inner call; the outer one goes on.
        let outer = catch_panic(|| catch_panic(|| panic!("inner")).unwrap_err());
        assert!(outer.unwrap().starts_with("inner"));
    }

    #[test]
    fn a_panicking_constructor_becomes_the_library_error() {
        let lib: &'static GuestLibrary = Box::leak(Box::new(GuestLibrary::build("1", || {
            panic!("no plugins today")
        })));
        // SAFETY: `as_ffi` points into `lib`, leaked above.
        let ffi = unsafe { &*lib.as_ffi() };
        assert_eq!((ffi.abi_version, ffi.count), (crate::ffi::ABI_VERSION, 0));
        // SAFETY: the error string lives in `lib`.
        let error = String::from_utf8(unsafe { ffi.error.as_bytes() }.to_vec()).unwrap();
        assert!(
            error.starts_with("a plugin constructor panicked: no plugins today"),
            "{error}"
        );
    }
}
