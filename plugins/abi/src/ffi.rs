//! The `#[repr(C)]` types that cross the library boundary (DESIGN §4, "Dynamic plugins").
//!
//! A plugin library exports one symbol, [`ENTRY_SYMBOL`] (`knapsec_plugins`), of type
//! [`EntryFn`]. It returns a pointer to a [`PluginLibrary`] that stays valid for the life of
//! the process. Its first field is the ABI version: a host reads that field first and refuses
//! the library unless it equals [`ABI_VERSION`], before touching anything else.
//!
//! Each plugin of the library is described by a [`PluginHeader`]: kind, name, version,
//! description and a `call` entry point that takes a serialised request (RON text, see
//! [`crate::wire`]) and writes a serialised answer into an [`OutBuffer`] owned by the
//! plugin, which the host hands back to the plugin's `free`. Only bytes, lengths, integers and
//! function pointers cross: no Rust types, so host and plugin may come from different
//! compilers.

// `unsafe` is allowed here only: the C ABI: raw pointers and `extern "C"` function pointers. Every
// block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::c_void;

/// The ABI version this crate speaks. Bumped on any change of the types in this module or of
/// the wire format in [`crate::wire`].
pub const ABI_VERSION: u32 = 1;

/// The one symbol a plugin library exports (NUL-terminated for `dlsym`).
pub const ENTRY_SYMBOL: &[u8] = b"knapsec_plugins\0";

/// [`PluginHeader::kind`] of an architecture description.
pub const KIND_ARCHITECTURE: u32 = 1;
/// [`PluginHeader::kind`] of a knapsack strategy.
pub const KIND_KNAPSACK_STRATEGY: u32 = 2;

/// `call` succeeded: the buffer holds the answer (RON text).
pub const STATUS_OK: i32 = 0;
/// The plugin refused the request: the buffer holds a [`crate::wire::WireError`] (RON text).
pub const STATUS_ERROR: i32 = 1;
/// The plugin panicked: the buffer holds the panic message (UTF-8 text).
pub const STATUS_PANIC: i32 = 2;

/// A borrowed UTF-8 string (not NUL-terminated) that lives as long as the library.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StrRef {
    /// Start of the bytes.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl StrRef {
    /// The empty string.
    pub const EMPTY: StrRef = StrRef {
        ptr: std::ptr::null(),
        len: 0,
    };

    /// Borrows `s`; the caller keeps `s` alive as long as the `StrRef` is used.
    pub fn new(s: &str) -> Self {
        StrRef {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Reads the bytes back.
    ///
    /// # Safety
    /// `ptr` must be null (with `len == 0`) or point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A buffer allocated by the plugin and released by the plugin's [`FreeFn`].
#[repr(C)]
#[derive(Debug)]
pub struct OutBuffer {
    /// Start of the bytes.
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocation capacity, for the plugin's own `free` (hosts do not interpret it).
    pub cap: usize,
}

impl OutBuffer {
    /// An empty buffer (nothing to free).
    pub const EMPTY: OutBuffer = OutBuffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// `call(ctx, request, request_len, out) -> status`: handles one serialised request.
pub type CallFn = unsafe extern "C" fn(
    ctx: *const c_void,
    request: *const u8,
    request_len: usize,
    out: *mut OutBuffer,
) -> i32;

/// Releases a buffer that `call` returned.
pub type FreeFn = unsafe extern "C" fn(buffer: OutBuffer);

/// One plugin of a library.
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// [`KIND_ARCHITECTURE`] or [`KIND_KNAPSACK_STRATEGY`].
    pub kind: u32,
    /// Registry name, e.g. `"example-tinynet"`.
    pub name: StrRef,
    /// The plugin's own version, e.g. `"0.1.0"`.
    pub version: StrRef,
    /// One line for `knapsec plugins list`.
    pub description: StrRef,
    /// Opaque state handed back to `call`.
    pub ctx: *const c_void,
    /// Answers one request (see [`CallFn`]).
    pub call: CallFn,
    /// Releases a buffer `call` returned (see [`FreeFn`]).
    pub free: FreeFn,
}

/// What [`EntryFn`] returns. Lives for the life of the process.
#[repr(C)]
#[derive(Debug)]
pub struct PluginLibrary {
    /// Must equal the host's [`ABI_VERSION`]; always the first field, in every version.
    pub abi_version: u32,
    /// Number of headers at `plugins`.
    pub count: usize,
    /// The plugins' headers (`count` of them).
    pub plugins: *const PluginHeader,
    /// Non-empty when the library could not set itself up (e.g. a constructor panicked);
    /// then `count` is 0.
    pub error: StrRef,
}

/// The type of the exported [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginLibrary;
