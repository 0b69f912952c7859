//! The error type of knapsec-runtime.

use knapsec_core::backend::BackendError;
use knapsec_core::transport::{Role, TransportError};

/// Errors of the runtime's own messages (the per-inference contributions) and of the OS
/// random generator.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The transport failed.
    #[error("{role}, {op}: {source}")]
    Transport {
        /// The party that saw it.
        role: Role,
        /// What the runtime was doing.
        op: &'static str,
        /// The transport's error.
        source: TransportError,
    },
    /// A peer sent a message of the wrong size, or repeated a contribution.
    #[error("{role}, {op}: malformed message from the {peer}: {message}")]
    Malformed {
        /// The party that received it.
        role: Role,
        /// The party that sent it.
        peer: Role,
        /// What the runtime was doing.
        op: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The OS random generator failed.
    #[error("{role}: the OS random generator failed: {message}")]
    Rng {
        /// The party.
        role: Role,
        /// The generator's error.
        message: String,
    },
}

impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Transport { op, source, .. } => BackendError::Transport {
                layer: format!("session ({op})"),
                source,
            },
            RuntimeError::Malformed { role, .. } | RuntimeError::Rng { role, .. } => {
                BackendError::Party {
                    role,
                    message: e.to_string(),
                }
            }
        }
    }
}
