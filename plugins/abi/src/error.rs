//! Errors of loading and calling dynamic plugins. Every variant names the library, and the
//! plugin where one is involved, so that the CLI prints a one-line cause.

use std::path::PathBuf;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum AbiError {
    // === loading ===
    #[error("plugin library {path}: no such file")]
    NotFound { path: PathBuf },
    #[error("plugin library {path}: not a loadable shared library ({message})")]
    NotALibrary { path: PathBuf, message: String },
    #[error("plugin library {path}: not a knapsec plugin (it exports no `{symbol}` symbol)")]
    NoEntry { path: PathBuf, symbol: String },
    #[error(
        "plugin library {path}: built for knapsec plugin ABI version {found}, this knapsec speaks version {supported}; rebuild the plugin against knapsec-plugin-abi with ABI version {supported}"
    )]
    WrongAbi {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("plugin library {path}: failed to initialise: {message}")]
    InitFailed { path: PathBuf, message: String },

    // === calling ===
    #[error("plugin {plugin:?} in {path}: panicked: {message}")]
    Panic {
        path: PathBuf,
        plugin: String,
        message: String,
    },
    #[error("plugin {plugin:?} in {path}: malformed answer: {message}")]
    Malformed {
        path: PathBuf,
        plugin: String,
        message: String,
    },
    #[error("plugin {plugin:?} in {path}: {message}")]
    Refused {
        path: PathBuf,
        plugin: String,
        message: String,
    },

    // === plugin-set files ===
    #[error("plugin set {path}: {message}")]
    PluginSet { path: PathBuf, message: String },
    #[error("plugin folder {path}: {source}")]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },

    // === registry ===
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
}
