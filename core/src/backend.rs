//! The secure-backend plugin trait (DESIGN §4, §5): runs one party's side of a three-party
//! inference of a [`SecureModel`] over a [`Transport`].
//!
//! Backends are chosen by name in a config; their options travel as RON text, so that a
//! backend's own option type stays inside its crate and the handshake can compare the
//! canonical form byte for byte.

use crate::graph::{ModelWeights, SecureModel};
use crate::transport::{Role, Transport, TransportError};
use serde::{Deserialize, Serialize};

/// Pairwise keys of one session: the 32-byte seed each pair of parties shares (agreed per
/// session, never fixed in code), plus this party's private seed. A party holds `None` for
/// the pair it is not in.
#[derive(Clone, Default)]
pub struct SessionKeys {
    /// Seed shared by client and server.
    pub client_server: Option<[u8; 32]>,
    /// Seed shared by client and helper.
    pub client_helper: Option<[u8; 32]>,
    /// Seed shared by server and helper.
    pub server_helper: Option<[u8; 32]>,
    /// This party's own seed.
    pub private: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys { .. }")
    }
}

impl SessionKeys {
    /// The key this party shares with `peer`, if it holds one.
    pub fn with(&self, me: Role, peer: Role) -> Option<[u8; 32]> {
        match (me.min(peer), me.max(peer)) {
            (Role::Client, Role::Server) => self.client_server,
            (Role::Client, Role::Helper) => self.client_helper,
            (Role::Server, Role::Helper) => self.server_helper,
            _ => None,
        }
    }
}

/// Everything one party brings to an inference.
pub struct PartyJob<'a> {
    /// The party's role.
    pub role: Role,
    /// The secure model's public part (graph, shapes, spec).
    pub model: &'a SecureModel,
    /// The server's weights; `None` for client and helper.
    pub weights: Option<&'a ModelWeights>,
    /// The client's input image, `C·H·W` real values; `None` for server and helper.
    pub input: Option<&'a [f32]>,
    /// The backend's options as RON text (empty for the defaults).
    pub options: &'a str,
    /// The session's keys.
    pub keys: &'a SessionKeys,
    /// The connections to the two other parties.
    pub transport: &'a mut dyn Transport,
}

/// What the client learns (server and helper learn nothing and return `Nothing`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartyOutput {
    /// Server and helper learn nothing.
    Nothing,
    /// Real-valued logits, `C·H·W`.
    Logits(Vec<f32>),
    /// Only the label (classification) or the label map (segmentation, `H·W`).
    Labels(Vec<u32>),
}

/// Errors of a secure backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The transport failed.
    #[error("transport failed at layer {layer:?}: {source}")]
    Transport {
        /// The layer being run.
        layer: String,
        /// The transport's error.
        source: TransportError,
    },
    /// Options that do not parse or are out of range.
    #[error("invalid backend options: {0}")]
    Options(String),
    /// A model this backend cannot run.
    #[error("the model is not supported by this backend: {0}")]
    Unsupported(String),
    /// A party failed (bad input, inconsistent messages).
    #[error("{role}: {message}")]
    Party {
        /// The party.
        role: Role,
        /// What went wrong.
        message: String,
    },
}

/// A three-party secure-inference protocol.
pub trait SecureBackend: Send + Sync {
    /// Registry name, e.g. `"securenn"`.
    fn name(&self) -> &str;
    /// One line for `knapsec plugins list`.
    fn description(&self) -> &str;
    /// Parses options (RON text) and returns their canonical form, for the handshake.
    fn canonical_options(&self, options: &str) -> Result<String, BackendError>;
    /// Runs this party's side of one inference.
    fn run(&self, job: PartyJob<'_>) -> Result<PartyOutput, BackendError>;
}
