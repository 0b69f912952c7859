//! Errors of the torch side, grouped by domain. Each variant names the file, layer, block or
//! tensor key involved.

use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

/// Everything that can go wrong in `knapsec-nn`.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    // === networks and slots ===
    /// A ReLU layer name the network does not have.
    #[error("architecture {arch:?} has no ReLU layer {layer:?}")]
    UnknownLayer {
        /// The architecture.
        arch: String,
        /// The layer asked for.
        layer: String,
    },
    /// A block name the network does not have.
    #[error("architecture {arch:?} has no block {block:?}")]
    UnknownBlock {
        /// The architecture.
        arch: String,
        /// The block asked for.
        block: String,
    },
    /// A block index past the network's blocks.
    #[error(
        "architecture {arch:?}: block index {index} is out of range (the network has {count} blocks)"
    )]
    BlockOutOfRange {
        /// The architecture.
        arch: String,
        /// The index asked for.
        index: usize,
        /// Blocks the network has.
        count: usize,
    },
    /// A layer's block sizes do not number its channels.
    #[error("layer {layer:?}: {found} block sizes given for {expected} channels")]
    WrongChannelCount {
        /// The layer.
        layer: String,
        /// Channels of the layer.
        expected: usize,
        /// Block sizes given.
        found: usize,
    },
    /// Two ReLU slots with one name.
    #[error("ReLU layer {layer:?} is registered twice")]
    DuplicateLayer {
        /// The layer.
        layer: String,
    },
    /// An input of the wrong shape.
    #[error(
        "{arch}: input has shape {found:?}, expected [N, {expected_c}, {expected_h}, {expected_w}]"
    )]
    BadInput {
        /// The architecture.
        arch: String,
        /// The input's shape.
        found: Vec<i64>,
        /// Channels the network takes.
        expected_c: i64,
        /// Height the network takes.
        expected_h: i64,
        /// Width the network takes.
        expected_w: i64,
    },
    /// No network builder is linked in for an architecture.
    #[error("no network builder for architecture {name:?} is linked in (available: {available})")]
    NoSuchNet {
        /// The architecture asked for.
        name: String,
        /// The architectures that have one, comma-separated.
        available: String,
    },
    /// Two network builders under one name.
    #[error("network builder for {name:?} is registered twice")]
    DuplicateNet {
        /// The architecture.
        name: String,
    },
    /// An architecture option out of range or of the wrong kind.
    #[error("architecture {arch:?}: option {option} {reason}")]
    BadOption {
        /// The architecture.
        arch: String,
        /// The option.
        option: &'static str,
        /// What is wrong with its value.
        reason: String,
    },

    // === weights ===
    /// A weight file's tensors do not fit the architecture (missing, extra or misshapen keys).
    #[error("{path}: weights do not match architecture {arch:?}:{details}")]
    WeightMismatch {
        /// The weight file.
        path: PathBuf,
        /// The architecture.
        arch: String,
        /// The keys at fault, one per line.
        details: String,
    },
    /// A tensor of a dtype that cannot be loaded.
    #[error(
        "{path}: tensor {key:?} has dtype {dtype}, which cannot be loaded (expected F32, F64, F16, BF16 or I64)"
    )]
    UnsupportedDtype {
        /// The weight file.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Its dtype.
        dtype: String,
    },
    /// A weight file that cannot be read or written.
    #[error("{path}: {message}")]
    WeightFile {
        /// The weight file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },

    // === export and evaluation ===
    /// The network cannot be exported as a secure model.
    #[error("export of {arch:?}: {message}")]
    Export {
        /// The architecture.
        arch: String,
        /// Why.
        message: String,
    },
    /// A node of a graph cannot be evaluated.
    #[error("graph evaluation, node {node} ({name}): {message}")]
    Eval {
        /// The node's index.
        node: usize,
        /// The node's name.
        name: String,
        /// What went wrong.
        message: String,
    },

    // === data sets ===
    /// A data set that cannot be read or does not fit.
    #[error("data: {0}")]
    Data(String),

    // === distortion extraction ===
    /// Distortion extraction cannot run (bad options, an empty sample).
    #[error("distortion extraction: {0}")]
    Distortion(String),
    /// A checkpoint that cannot be resumed.
    #[error("{path}: cannot resume: {reason}")]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why it cannot be resumed.
        reason: String,
    },
    /// Distortion extraction was stopped before it finished; its checkpoint is kept.
    #[error(
        "distortion extraction was stopped after {units} work units; the checkpoint keeps them (run again with --resume)"
    )]
    Interrupted {
        /// Work units finished and kept.
        units: usize,
    },

    // === lower layers ===
    /// An error of `knapsec-core` (invalid artefacts, the registry).
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
    /// An error of libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}
