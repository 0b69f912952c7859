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
        role: Role,
        layer: String,
        op: &'static str,
        source: TransportError,
    },
    /// A peer sent a message of the wrong size or content.
    #[error("{role}, layer {layer:?} ({op}): malformed message from the {peer}: {message}")]
    Malformed {
        role: Role,
        peer: Role,
        layer: String,
        op: &'static str,
        message: String,
    },
    /// Options could not be parsed or are out of range.
    #[error("invalid securenn options: {0}")]
    Options(String),
    /// The model uses something this backend cannot run.
    #[error("layer {layer:?}: {message}")]
    Unsupported { layer: String, message: String },
    /// The model, weights or input are inconsistent.
    #[error("{role}: {message}")]
    Input { role: Role, message: String },
    /// A ring kernel refused its operands (a shape bug, named by layer).
    #[error("{role}, layer {layer:?}: {source}")]
    Ring {
        role: Role,
        layer: String,
        source: knapsec_ring::RingError,
    },
    /// A party thread panicked or could not be joined (simulation only).
    #[error("{role} thread failed: {message}")]
    Thread { role: Role, message: String },
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
