//! The error type of ONNX import.

use thiserror::Error;

/// Why an ONNX file could not be imported.
#[derive(Debug, Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX `ModelProto`.
    #[error("not an ONNX model: {0}")]
    Decode(String),
    /// The model's opset of the default domain is outside what is supported.
    #[error("ONNX opset {found} is not supported (supported: 11 to 21)")]
    Opset {
        /// The opset the model imports.
        found: i64,
    },
    /// Ops the importer has no form for, found before any work is done.
    #[error(
        "unsupported ONNX operators: {list}; supported: {supported} (and shape arithmetic that folds to constants)"
    )]
    Unsupported {
        /// Each unsupported op type with the names of its nodes.
        list: String,
        /// The supported op types.
        supported: String,
    },
    /// A node that cannot be imported as it is.
    #[error("ONNX node {node:?} ({op}): {why}")]
    Node {
        /// The node's name (or its first output when it has none).
        node: String,
        /// Its op type.
        op: String,
        /// What is wrong.
        why: String,
    },
    /// The graph as a whole is not importable.
    #[error("ONNX graph: {0}")]
    Graph(String),
    /// The description built from the graph is invalid.
    #[error(transparent)]
    Core(#[from] knapsec_core::CoreError),
}

/// Result with [`OnnxError`].
pub type Result<T> = std::result::Result<T, OnnxError>;
