//! The error type of knapsec-securenn. Every variant names the party and, where there is
//! one, the layer (graph node) and op involved.

use knapsec_core::backend::BackendError;
use knapsec_core::transport::{Role, TransportError};

/// Result alias of this crate.
pub type Result<T, E = SecureNnError> = std::result::Result<T, E>;

/// Errors of the SecureNN backend.
#[derive(Debug, thiserror::Error)]
pub enum SecureNnError {
    /// The transport failed (a peer disconnected, timed out, ...).
    #[error("{role}, layer {layer:?} ({op}): {source}")]
    Transport {
        /// The party that saw it.
        role: Role,
        /// The layer being run.
        layer: String,
        /// The operation being run.
        op: &'static str,
        /// The transport's error.
        source: TransportError,
    },
    /// A peer sent a message of the wrong size or content.
    #[error("{role}, layer {layer:?} ({op}): malformed message from the {peer}: {message}")]
    Malformed {
        /// The party that received it.
        role: Role,
        /// The party that sent it.
        peer: Role,
        /// The layer being run.
        layer: String,
        /// The operation being run.
        op: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Options could not be parsed or are out of range.
    #[error("invalid securenn options: {0}")]
    Options(String),
    /// The model uses something this backend cannot run.
    #[error("layer {layer:?}: {message}")]
    Unsupported {
        /// The layer.
        layer: String,
        /// What it uses that this backend cannot run.
        message: String,
    },
    /// The model, weights or input are inconsistent.
    #[error("{role}: {message}")]
    Input {
        /// The party that found it.
        role: Role,
        /// What is inconsistent.
        message: String,
    },
    /// A ring kernel refused its operands (a shape bug, named by layer).
    #[error("{role}, layer {layer:?}: {source}")]
    Ring {
        /// The party that ran it.
        role: Role,
        /// The layer being run.
        layer: String,
        /// The ring kernel's error.
        source: knapsec_ring::RingError,
    },
    /// A party thread panicked or could not be joined (simulation only).
    #[error("{role} thread failed: {message}")]
    Thread {
        /// The party whose thread failed.
        role: Role,
        /// The panic message, or why it could not be joined.
        message: String,
    },
}

impl From<knapsec_runtime::RuntimeError> for SecureNnError {
    fn from(e: knapsec_runtime::RuntimeError) -> Self {
        use knapsec_runtime::RuntimeError as R;
        match e {
            R::Transport { role, op, source } => SecureNnError::Transport {
                role,
                layer: "session".into(),
                op,
                source,
            },
            R::Malformed {
                role,
                peer,
                op,
                message,
            } => SecureNnError::Malformed {
                role,
                peer,
                layer: "session".into(),
                op,
                message,
            },
            R::Rng { role, message } => SecureNnError::Input {
                role,
                message: format!("the OS random generator failed: {message}"),
            },
        }
    }
}

impl From<SecureNnError> for BackendError {
    fn from(e: SecureNnError) -> Self {
        match e {
            SecureNnError::Transport { layer, source, .. } => {
                BackendError::Transport { layer, source }
            }
            SecureNnError::Options(m) => BackendError::Options(m),
            SecureNnError::Unsupported { .. } => BackendError::Unsupported(e.to_string()),
            other => {
                let role = match &other {
                    SecureNnError::Malformed { role, .. }
                    | SecureNnError::Input { role, .. }
                    | SecureNnError::Ring { role, .. }
                    | SecureNnError::Thread { role, .. } => *role,
                    _ => Role::Client,
                };
                BackendError::Party {
                    role,
                    message: other.to_string(),
                }
            }
        }
    }
}
