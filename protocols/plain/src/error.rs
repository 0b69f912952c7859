//! The one error enum of knapsec-plain. Every variant names the node (or party) involved.

use knapsec_core::transport::TransportError;

/// Result alias of this crate.
pub type Result<T, E = PlainError> = std::result::Result<T, E>;

/// Errors of the cleartext executor.
#[derive(Debug, thiserror::Error)]
pub enum PlainError {
    /// The graph or the weights do not fit together (from `knapsec-core`'s checks).
    #[error("{0}")]
    Model(#[from] knapsec_core::CoreError),
    /// The input image is unusable.
    #[error("input: {0}")]
    Input(String),
    /// A node cannot be evaluated (shapes that disagree with the graph, bad parameters).
    #[error("node {index} ({name}): {message}")]
    Node {
        /// Position of the node in the graph.
        index: usize,
        /// Name of the node.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// Backend options that do not parse.
    #[error("invalid plain-backend options: {0}")]
    Options(String),
    /// A message between the parties failed or was malformed.
    #[error("{context}: {source}")]
    Transport {
        /// What was being sent or received.
        context: String,
        /// The transport's error.
        source: TransportError,
    },
    /// A message arrived with the wrong size or content.
    #[error("malformed message: {0}")]
    Message(String),
}
