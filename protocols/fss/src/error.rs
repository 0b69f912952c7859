//! The errors of the `fss` backend: those of the party machinery it shares with `securenn`
//! (context, transport, linear layers, options), and its own.

use knapsec_core::backend::BackendError;
use knapsec_core::transport::Role;
use knapsec_securenn::SecureNnError;

/// Result with [`FssError`].
pub type Result<T, E = FssError> = std::result::Result<T, E>;

/// Errors of the `fss` backend.
#[derive(Debug, thiserror::Error)]
pub enum FssError {
    /// The shared party machinery failed: transport, malformed message, options, a model it
    /// cannot run, bad input or a ring kernel (the error names party, layer and op).
    #[error(transparent)]
    Party(#[from] SecureNnError),
    /// The runtime's per-inference contribution exchange failed (transport, a repeated
    /// contribution, the OS random generator).
    #[error(transparent)]
    Runtime(#[from] knapsec_runtime::RuntimeError),
    /// A peer sent a value outside its domain (e.g. a DCF key of the wrong size).
    #[error("{role}, layer {layer:?}: malformed message from the {peer}: {message}")]
    Malformed {
        /// The party that received it.
        role: Role,
        /// The party that sent it.
        peer: Role,
        /// The layer being run.
        layer: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<FssError> for BackendError {
    fn from(e: FssError) -> Self {
        match e {
            FssError::Party(e) => e.into(),
            FssError::Runtime(e) => e.into(),
            FssError::Malformed { role, .. } => BackendError::Party {
                role,
                message: e.to_string(),
            },
        }
    }
}
