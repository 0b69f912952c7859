//! Errors of the core data model, grouped by domain. Every variant names the file, layer or
//! channel involved so that the CLI can print a one-line cause.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    // === block sizes ===
    #[error("invalid patch size {h}x{w}: both sides must be at least 1")]
    ZeroSizedPatch { h: u32, w: u32 },
    #[error("cannot parse patch size {text:?}: expected HxW, `identity` or `zero`")]
    BadBlockText { text: String },

    // === specs ===
    #[error("block spec is for architecture {found:?}, expected {expected:?}")]
    WrongArchitecture { expected: String, found: String },
    #[error(
        "block spec format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat { found: u32, supported: u32 },
    #[error("block spec names layer {layer:?}, which architecture {arch:?} does not have")]
    UnknownLayer { arch: String, layer: String },
    #[error("block spec has no entry for layer {layer:?} of architecture {arch:?}")]
    MissingLayer { arch: String, layer: String },
    #[error("layer {layer:?}: block spec has {found} channels, the architecture has {expected}")]
    WrongChannelCount {
        layer: String,
        expected: usize,
        found: usize,
    },
    #[error("layer {layer:?}, channel {channel}: {reason}")]
    BadChannel {
        layer: String,
        channel: usize,
        reason: String,
    },

    // === files ===
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: unsupported file extension (expected one of {expected})")]
    UnknownExtension {
        path: PathBuf,
        expected: &'static str,
    },

    // === registry ===
    #[error("{kind} plugin {name:?} is registered twice: by {first} and by {second}")]
    DuplicatePlugin {
        kind: &'static str,
        name: String,
        first: String,
        second: String,
    },
    #[error("no {kind} plugin named {name:?} (available: {available})")]
    NoSuchPlugin {
        kind: &'static str,
        name: String,
        available: String,
    },

    // === graph ===
    #[error("secure model: {0}")]
    Graph(String),

    // === anything else with context ===
    #[error("{0}")]
    Invalid(String),
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn parse(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        CoreError::Parse {
            path: path.into(),
            message: message.to_string(),
        }
    }
}
