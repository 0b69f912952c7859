//! Errors of the torch side, grouped by domain. Each variant names the file, layer, block or
//! tensor key involved.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

/// Everything that can go wrong in `knapsec-nn`.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    // === networks and slots ===
    #[error("architecture {arch:?} has no ReLU layer {layer:?}")]
    UnknownLayer { arch: String, layer: String },
    #[error("architecture {arch:?} has no block {block:?}")]
    UnknownBlock { arch: String, block: String },
    #[error(
        "architecture {arch:?}: block index {index} is out of range (the network has {count} blocks)"
    )]
    BlockOutOfRange {
        arch: String,
        index: usize,
        count: usize,
    },
    #[error("layer {layer:?}: {found} block sizes given for {expected} channels")]
    WrongChannelCount {
        layer: String,
        expected: usize,
        found: usize,
    },
    #[error("ReLU layer {layer:?} is registered twice")]
    DuplicateLayer { layer: String },
    #[error(
        "{arch}: input has shape {found:?}, expected [N, {expected_c}, {expected_h}, {expected_w}]"
    )]
    BadInput {
        arch: String,
        found: Vec<i64>,
        expected_c: i64,
        expected_h: i64,
        expected_w: i64,
    },
    #[error("no network builder for architecture {name:?} is linked in (available: {available})")]
    NoSuchNet { name: String, available: String },
    #[error("network builder for {name:?} is registered twice")]
    DuplicateNet { name: String },
    #[error("architecture {arch:?}: option {option} {reason}")]
    BadOption {
        arch: String,
        option: &'static str,
        reason: String,
    },

    // === weights ===
    #[error("{path}: weights do not match architecture {arch:?}:{details}")]
    WeightMismatch {
        path: PathBuf,
        arch: String,
        details: String,
    },
    #[error(
        "{path}: tensor {key:?} has dtype {dtype}, which cannot be loaded (expected F32, F64, F16, BF16 or I64)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: {message}")]
    WeightFile { path: PathBuf, message: String },

    // === export and evaluation ===
    #[error("export of {arch:?}: {message}")]
    Export { arch: String, message: String },
    #[error("graph evaluation, node {node} ({name}): {message}")]
    Eval {
        node: usize,
        name: String,
        message: String,
    },

    // === data sets ===
    #[error("data: {0}")]
    Data(String),

    // === distortion extraction ===
    #[error("distortion extraction: {0}")]
    Distortion(String),
    #[error("{path}: cannot resume: {reason}")]
    Resume { path: PathBuf, reason: String },
    #[error(
        "distortion extraction was stopped after {units} work units; the checkpoint keeps them (run again with --resume)"
    )]
    Interrupted { units: usize },

    // === lower layers ===
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
