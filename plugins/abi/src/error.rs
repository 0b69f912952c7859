//! Errors of loading and calling dynamic plugins. Every variant names the library, and the
//! plugin where one is involved, so that the CLI prints a one-line cause.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    // === loading ===
    /// The library file does not exist.
    #[error("plugin library {path}: no such file")]
    NotFound {
        /// The library.
        path: PathBuf,
    },
    /// The file is not a shared library this system can load.
    #[error("plugin library {path}: not a loadable shared library ({message})")]
    NotALibrary {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        message: String,
    },
    /// The library does not export the plugin entry point.
    #[error("plugin library {path}: not a knapsec plugin (it exports no `{symbol}` symbol)")]
    NoEntry {
        /// The library.
        path: PathBuf,
        /// The entry point's symbol name.
        symbol: String,
    },
    /// The library speaks another ABI version.
    #[error(
        "plugin library {path}: built for knapsec plugin ABI version {found}, this knapsec speaks version {supported}; rebuild the plugin against knapsec-plugin-abi with ABI version {supported}"
    )]
    WrongAbi {
        /// The library.
        path: PathBuf,
        /// The version the library was built for.
        found: u32,
        /// The version this host speaks.
        supported: u32,
    },
    /// Building the library's plugins failed (a panic or an error in the plugin's code).
    #[error("plugin library {path}: failed to initialise: {message}")]
    InitFailed {
        /// The library.
        path: PathBuf,
        /// What the library reported.
        message: String,
    },

    // === calling ===
    /// A plugin panicked during a call (caught inside the library).
    #[error("plugin {plugin:?} in {path}: panicked: {message}")]
    Panic {
        /// The library.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The panic message and location.
        message: String,
    },
    /// A plugin's answer does not decode or does not fit the request.
    #[error("plugin {plugin:?} in {path}: malformed answer: {message}")]
    Malformed {
        /// The library.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// What is wrong with the answer.
        message: String,
    },
    /// A plugin answered a call with an error.
    #[error("plugin {plugin:?} in {path}: {message}")]
    Refused {
        /// The library.
        path: PathBuf,
        /// The plugin's name.
        plugin: String,
        /// The plugin's error message.
        message: String,
    },

    // === plugin-set files ===
    /// A plugin-set file is unreadable or invalid.
    #[error("plugin set {path}: {message}")]
    PluginSet {
        /// The plugin-set file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A plugin folder cannot be read.
    #[error("plugin folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    // === registry ===
    /// Registering a plugin failed (a duplicate name, or an invalid description).
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
}
