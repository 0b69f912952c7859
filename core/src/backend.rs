//! The secure-backend plugin trait (DESIGN §4, §5): runs one party's side of a three-party
//! inference of a [`SecureModel`] over a [`Transport`].
//!
//! Backends are chosen by name in a config; their options travel as RON text, so that a
//! backend's own option type stays inside its crate and the handshake can compare the
//! canonical form byte for byte.
//!
//! A backend runs in three explicit phases (DESIGN §5): [`SecureBackend::open_session`]
//! once per session (e.g. masking the weights), then per inference
//! [`PartySession::offline`] (everything that does not depend on the input: correlated
//! randomness, keys) and [`PartySession::online`] (the input arrives, the client learns the
//! output). The phases have defaults, so a simple backend implements [`SecureBackend::run`]
//! alone (it then does all its work in the online phase); the runtime
//! (`knapsec-runtime`: party driver, simulate harness) drives every backend through the
//! phases, and [`run_phases`] runs one inference through them. A backend states its closed-form
//! costs ([`SecureBackend::expected_cost`]), which the conformance kit checks against the
//! metered traffic.

use crate::graph::{ModelWeights, SecureModel};
use crate::transport::{Role, Transport, TransportError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// Pairwise keys of one session: the 32-byte seed each pair of parties shares (agreed per
/// session, never fixed in code), plus this party's private seed. A party holds `None` for
/// the pair it is not in. One value (or its clones) serves all inferences of a session, so
/// that [`SessionKeys::contributions`] sees every inference of it.
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
    /// The per-inference contributions received from peers so far in this session.
    pub contributions: ContributionLog,
}

/// The per-inference random contributions a party received from its peers during one
/// session, so that a peer repeating one (e.g. a client replaying an earlier inference's
/// randomness to get the same masks again) is refused. Clones share the log.
#[derive(Clone, Debug, Default)]
pub struct ContributionLog(Arc<Mutex<HashSet<Contribution>>>);

/// One received contribution: receiver, sender, value.
type Contribution = (Role, Role, [u8; 16]);

impl ContributionLog {
    /// Records `contribution` received by `me` from `peer`; false if it was already recorded
    /// in this session. (The receiver is part of the entry so that the three parties of an
    /// in-process simulation may share one log.)
    pub fn fresh(&self, me: Role, peer: Role, contribution: [u8; 16]) -> bool {
        // A poisoned lock only means another thread panicked while inserting: the set
        // itself is still valid.
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.insert((me, peer, contribution))
    }

    /// Contributions recorded so far.
    pub fn len(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// True if none is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// Index of this inference in its session (0, 1, 2, …), the same at all three parties;
    /// a backend binds its per-inference randomness to it.
    pub inference: u64,
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
    /// Whether running it reveals nothing beyond each party's output (the protocol is private
    /// in the semi-honest model). `knapsec party` refuses a backend that is not, unless told
    /// `--insecure-cleartext`. Defaults to true; the `plain` oracle says false.
    fn is_private(&self) -> bool {
        true
    }
    /// Identity and version of the code that implements the protocol (e.g.
    /// `"knapsec-securenn 0.1.0"`), compared byte for byte in the deployment handshake, so
    /// that two builds of a backend that might disagree on the wire refuse each other.
    fn version(&self) -> String {
        format!("{} (unversioned)", self.name())
    }
    /// Parses options (RON text) and returns their canonical form, for the handshake.
    fn canonical_options(&self, options: &str) -> Result<String, BackendError>;
    /// Runs this party's side of one whole inference (session, offline and online work).
    /// The one method a simple backend implements; a phased backend implements it with
    /// [`run_phases`].
    fn run(&self, job: PartyJob<'_>) -> Result<PartyOutput, BackendError>;

    /// Once per session: this party's state for the session's inferences, after the work
    /// done once per session (messages over `transport`, e.g. the server's masked weights
    /// to the helper). The default does nothing here and runs each inference with
    /// [`SecureBackend::run`] in the online phase.
    fn open_session<'a>(
        &'a self,
        job: SessionJob<'a>,
        transport: &mut dyn Transport,
    ) -> Result<Box<dyn PartySession + 'a>, BackendError> {
        let _ = transport;
        Ok(Box::new(OnePhase { backend: self, job }))
    }

    /// An upper bound on the payload bytes of any one message this backend sends in a
    /// session of `model` under `options` (setup and inferences), if it states one. A
    /// deployment caps every frame at it (plus its own small messages), so that a misbehaving
    /// peer cannot make a party buffer more. `None`: only the deployment's `max_frame_mib`.
    fn max_message(&self, model: &SecureModel, options: &str) -> Result<Option<u64>, BackendError> {
        let _ = (model, options);
        Ok(None)
    }

    /// Options under which the client learns only the label (classification) or the label
    /// map (segmentation), by a secure argmax, and otherwise the same as `options`; `None` if
    /// the backend cannot reveal labels only. The conformance kit requires it of every
    /// private backend.
    fn label_only_options(&self, options: &str) -> Result<Option<String>, BackendError> {
        let _ = options;
        Ok(None)
    }

    /// The closed-form costs of one session and one inference of `model` under `options`,
    /// if the backend states them. The conformance kit requires them of every private
    /// backend and compares them with the metered traffic.
    fn expected_cost(
        &self,
        model: &SecureModel,
        options: &str,
    ) -> Result<Option<ExpectedCost>, BackendError> {
        let _ = (model, options);
        Ok(None)
    }
}

/// What a party brings to a session ([`SecureBackend::open_session`]).
#[derive(Clone, Copy)]
pub struct SessionJob<'a> {
    /// The party's role.
    pub role: Role,
    /// The secure model's public part.
    pub model: &'a SecureModel,
    /// The server's weights; `None` for client and helper.
    pub weights: Option<&'a ModelWeights>,
    /// The backend's options as RON text (empty for the defaults).
    pub options: &'a str,
    /// The session's keys.
    pub keys: &'a SessionKeys,
}

impl std::fmt::Debug for SessionJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionJob")
            .field("role", &self.role)
            .field("arch", &self.model.arch)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One party's state for the inferences of a session. The runtime calls, for inference
/// `i = 0, 1, …`, `offline(i)` then `online(i)` at all three parties; the same `i` at all
/// three.
pub trait PartySession: Send {
    /// Offline phase of inference `inference`: everything that does not depend on the input.
    /// Defaults to nothing.
    fn offline(
        &mut self,
        inference: u64,
        transport: &mut dyn Transport,
    ) -> Result<(), BackendError> {
        let _ = (inference, transport);
        Ok(())
    }

    /// Online phase of inference `inference`: `input` is the client's image (`None` at
    /// server and helper); the client returns its output, the others
    /// [`PartyOutput::Nothing`].
    fn online(
        &mut self,
        inference: u64,
        input: Option<&[f32]>,
        transport: &mut dyn Transport,
    ) -> Result<PartyOutput, BackendError>;

    /// CPU seconds by op kind (e.g. `"linear"`, `"comparison"`) spent by this thread since
    /// the last call, for the harness's reports; resets the counters. Defaults to none.
    fn take_cpu_profile(&mut self) -> Vec<(&'static str, f64)> {
        Vec::new()
    }
}

/// The default session of a backend that implements [`SecureBackend::run`] only.
struct OnePhase<'a, B: ?Sized> {
    backend: &'a B,
    job: SessionJob<'a>,
}

impl<B: SecureBackend + ?Sized> PartySession for OnePhase<'_, B> {
    fn online(
        &mut self,
        inference: u64,
        input: Option<&[f32]>,
        transport: &mut dyn Transport,
    ) -> Result<PartyOutput, BackendError> {
        let j = self.job;
        self.backend.run(PartyJob {
            role: j.role,
            model: j.model,
            weights: j.weights,
            input,
            options: j.options,
            keys: j.keys,
            inference,
            transport,
        })
    }
}

/// Runs one whole inference (`job.inference` of its session) through the phases of
/// `backend`, opening the session for it: what a phased backend's [`SecureBackend::run`]
/// does.
pub fn run_phases<B: SecureBackend + ?Sized>(
    backend: &B,
    job: PartyJob<'_>,
) -> Result<PartyOutput, BackendError> {
    let PartyJob {
        role,
        model,
        weights,
        input,
        options,
        keys,
        inference,
        transport,
    } = job;
    let mut session = backend.open_session(
        SessionJob {
            role,
            model,
            weights,
            options,
            keys,
        },
        transport,
    )?;
    session.offline(inference, transport)?;
    session.online(inference, input, transport)
}

/// A backend's closed-form costs for one model ([`SecureBackend::expected_cost`]): bytes
/// are summed over all six directed links (what the metering decorator counts), rounds are
/// causal rounds (`knapsec-net`'s metering).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedCost {
    /// Bytes of the work done once per session ([`SecureBackend::open_session`]).
    pub setup_bytes: u64,
    /// Bytes of one inference's offline phase, where the backend separates them from the
    /// online bytes; `None` if it states only [`ExpectedCost::inference_bytes`].
    pub offline_bytes: Option<u64>,
    /// Bytes of one inference's online phase (as for `offline_bytes`).
    pub online_bytes: Option<u64>,
    /// Bytes of one inference, offline and online together.
    pub inference_bytes: u64,
    /// Causal rounds of one inference's online phase, where the backend states them.
    pub online_rounds: Option<u64>,
    /// Bytes of correlated randomness (e.g. function-secret-sharing keys) that the parties
    /// hold per inference after the offline phase, summed over the parties; 0 for none.
    pub key_bytes: u64,
}
