//! Errors of the core data model, grouped by domain. Every variant names the file, layer or
//! channel involved so that the CLI can print a one-line cause.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Errors of the core data model.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    // === block sizes ===
    /// A patch with a zero side.
    #[error("invalid patch size {h}x{w}: both sides must be at least 1")]
    ZeroSizedPatch {
        /// Patch height.
        h: u32,
        /// Patch width.
        w: u32,
    },
    /// Text that is not a block size.
    #[error("cannot parse patch size {text:?}: expected HxW, `identity` or `zero`")]
    BadBlockText {
        /// The text.
        text: String,
    },

    // === specs ===
    /// A block spec made for another architecture.
    #[error("block spec is for architecture {found:?}, expected {expected:?}")]
    WrongArchitecture {
        /// The architecture in use.
        expected: String,
        /// The spec's architecture.
        found: String,
    },
    /// A block spec of a format version this build does not read.
    #[error(
        "block spec format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedFormat {
        /// The spec's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A block spec names a layer the architecture does not have.
    #[error("block spec names layer {layer:?}, which architecture {arch:?} does not have")]
    UnknownLayer {
        /// The architecture.
        arch: String,
        /// The layer.
        layer: String,
    },
    /// A block spec lacks one of the architecture's layers.
    #[error("block spec has no entry for layer {layer:?} of architecture {arch:?}")]
    MissingLayer {
        /// The architecture.
        arch: String,
        /// The layer.
        layer: String,
    },
    /// A block spec's layer has another number of channels than the architecture's.
    #[error("layer {layer:?}: block spec has {found} channels, the architecture has {expected}")]
    WrongChannelCount {
        /// The layer.
        layer: String,
        /// Channels of the architecture's layer.
        expected: usize,
        /// Channels in the spec.
        found: usize,
    },
    /// A channel's block size does not fit its layer.
    #[error("layer {layer:?}, channel {channel}: {reason}")]
    BadChannel {
        /// The layer.
        layer: String,
        /// The channel.
        channel: usize,
        /// What is wrong.
        reason: String,
    },

    // === files ===
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file whose contents do not parse.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A file whose extension names no format this build reads.
    #[error("{path}: unsupported file extension (expected one of {expected})")]
    UnknownExtension {
        /// The file.
        path: PathBuf,
        /// The extensions that are read.
        expected: &'static str,
    },

    // === registry ===
    /// Two plugins of one kind under one name.
    #[error("{kind} plugin {name:?} is registered twice: by {first} and by {second}")]
    DuplicatePlugin {
        /// The kind of plugin.
        kind: &'static str,
        /// The name.
        name: String,
        /// Who registered it first.
        first: String,
        /// Who registered it again.
        second: String,
    },
    /// No plugin of a kind under a name.
    #[error("no {kind} plugin named {name:?} (available: {available})")]
    NoSuchPlugin {
        /// The kind of plugin.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// The names registered, comma-separated.
        available: String,
    },

    // === graph ===
    /// An invalid secure model (graph, shapes, weights).
    #[error("secure model: {0}")]
    Graph(String),

    // === anything else with context ===
    /// Anything else, with context.
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
