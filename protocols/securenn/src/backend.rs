//! The `securenn` backend plugin: runs one party of one inference over any [`Transport`]
//! (in-memory or TCP), registered with `inventory`.
//!
//! Message flow of one [`SecureBackend::run`]: every party sends a fresh 16-byte contribution
//! to both others (per-inference PRG keys of every pair from both members' contributions,
//! [`exchange_contributions`], [`crate::ctx`]); the helper tells the
//! server (1 byte) whether it still holds this session's masked weights, and if not the
//! server sends them (the setup of [`crate::linear`], once per session); then the offline and
//! the online phases of [`crate::exec`]. The helper keeps the masked weights of each session
//! in memory, keyed by the model's public hash and the server–helper session key, for the
//! [`SESSIONS_KEPT`] most recently used sessions (an evicted session repeats its setup).

use crate::ctx::{Ctx, InferenceKeys};
use crate::error::{Result, SecureNnError};
use crate::exec::Preprocessing;
use crate::exec::Session;
use crate::linear::HelperWeights;
use crate::options::Options;
use crate::profile;
use knapsec_core::backend::{
    BackendError, ExpectedCost, PartyJob, PartyOutput, PartySession, SecureBackend, SessionJob,
    SessionKeys,
};
use knapsec_core::graph::SecureModel;
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use knapsec_core::transport::Transport;
use std::sync::{Arc, Mutex};

/// The masked weights of one session's linear layers.
pub type Masked = Arc<Vec<Option<HelperWeights>>>;

/// Sessions whose masked weights a helper keeps (a ResNet50's are about 400 MB: `F` and the
/// ring kernel's second operands of it, made once per session).
pub const SESSIONS_KEPT: usize = 4;

/// The helper's masked weights of its most recently used sessions, least recent first: a
/// helper serving many sessions keeps at most [`SESSIONS_KEPT`] of them.
///
/// Shared by the backends that run this crate's linear setup (`fss` too): see
/// [`Session::setup_cached`].
#[derive(Debug, Default)]
pub struct SessionCache {
    entries: Vec<([u8; 32], Masked)>,
}

impl SessionCache {
    /// The weights of session `id`, which becomes the most recently used.
    pub fn get(&mut self, id: &[u8; 32]) -> Option<Masked> {
        let i = self.entries.iter().position(|(k, _)| k == id)?;
        let entry = self.entries.remove(i);
        let masked = Arc::clone(&entry.1);
        self.entries.push(entry);
        Some(masked)
    }

    /// Keeps the weights of session `id`, dropping the least recently used beyond the limit.
    pub fn put(&mut self, id: [u8; 32], masked: Masked) {
        self.entries.retain(|(k, _)| *k != id);
        if self.entries.len() >= SESSIONS_KEPT {
            self.entries.remove(0);
        }
        self.entries.push((id, masked));
    }
}

/// The SecureNN-style backend.
#[derive(Debug, Default)]
pub struct SecureNn {
    /// Helper: masked weights per session.
    cache: Mutex<SessionCache>,
}

knapsec_core::inventory::submit! {
    BackendRegistration { name: "securenn", provider: "knapsec-securenn", make: || Arc::new(SecureNn::default()) }
}

pub use knapsec_runtime::randomness::CONTRIBUTION_LEN;

/// The label of securenn's per-inference key derivation ([`InferenceKeys::derive`]).
pub const KEY_LABEL: &[u8] = b"knapsec-securenn inference key v2";

/// Exchanges this inference's contributions with the runtime's
/// [`knapsec_runtime::exchange_contributions`] (every party sends a fresh 16-byte value to both
/// others: one flight, six messages, 96 bytes in all; repeats refused) and sets the derived
/// per-inference keys in `ctx`. Returns the keys.
///
/// # Errors
/// A peer repeating a contribution ([`SecureNnError::Malformed`] naming it), the OS RNG
/// failing, or the transport.
pub fn exchange_contributions(
    ctx: &mut Ctx<'_>,
    keys: &SessionKeys,
    model_hash: &str,
    index: u64,
) -> Result<InferenceKeys> {
    exchange_keyed(ctx, keys, KEY_LABEL, model_hash, index)
}

/// [`exchange_contributions`] under a backend's own key `label` (a backend that runs this
/// crate's contexts, such as `fss`, derives keys distinct from securenn's).
pub fn exchange_keyed(
    ctx: &mut Ctx<'_>,
    keys: &SessionKeys,
    label: &[u8],
    model_hash: &str,
    index: u64,
) -> Result<InferenceKeys> {
    ctx.scope("session", "contribution");
    let derived =
        knapsec_runtime::exchange_contributions(ctx.transport(), keys, label, model_hash, index)?;
    ctx.set_inference(&derived);
    Ok(derived)
}

/// One party's securenn session for the runtime's phases: the weights masked in
/// [`SecureBackend::open_session`], then per inference the contributions and the offline
/// phase, and the online phase.
struct PhasedSession<'a> {
    role: Role,
    model: &'a SecureModel,
    session: Session<'a>,
    keys: &'a SessionKeys,
    model_hash: String,
    /// The inference whose offline phase ran, its keys and preprocessing.
    pending: Option<(u64, InferenceKeys, Preprocessing)>,
}

/// Checks the client's input size.
fn check_input(role: Role, model: &SecureModel, input: Option<&[f32]>) -> Result<()> {
    if role == Role::Client {
        let numel: u32 = model.input_shape().iter().product();
        let n = input.map_or(0, <[f32]>::len);
        if n != numel as usize {
            return Err(SecureNnError::Input {
                role: Role::Client,
                message: format!(
                    "input has {n} values, the model expects {numel} ({:?})",
                    model.input_shape()
                ),
            });
        }
    }
    Ok(())
}

impl PartySession for PhasedSession<'_> {
    fn offline(
        &mut self,
        inference: u64,
        transport: &mut dyn Transport,
    ) -> Result<(), BackendError> {
        let mut ctx = Ctx::new(self.role, transport, self.keys);
        let ik = exchange_contributions(&mut ctx, self.keys, &self.model_hash, inference)?;
        let pre = self.session.offline(&mut ctx)?;
        self.pending = Some((inference, ik, pre));
        Ok(())
    }

    fn online(
        &mut self,
        inference: u64,
        input: Option<&[f32]>,
        transport: &mut dyn Transport,
    ) -> Result<PartyOutput, BackendError> {
        let Some((i, ik, pre)) = self.pending.take().filter(|p| p.0 == inference) else {
            return Err(BackendError::Party {
                role: self.role,
                message: format!("online phase of inference {inference} without its offline phase"),
            });
        };
        debug_assert_eq!(i, inference);
        check_input(self.role, self.model, input)?;
        let mut ctx = Ctx::new(self.role, transport, self.keys);
        ctx.set_inference(&ik);
        Ok(self.session.online(&mut ctx, pre, input)?)
    }

    fn take_cpu_profile(&mut self) -> Vec<(&'static str, f64)> {
        profile::take().by_name()
    }
}

impl SecureNn {
    /// One inference as its own visit: the contributions, then the session's setup unless
    /// the helper still holds the masked weights of this session (a 1-byte flag to the
    /// server), the offline and the online phase.
    fn run_party(&self, job: PartyJob<'_>) -> Result<PartyOutput> {
        let options = Options::parse(job.options)?;
        check_input(job.role, job.model, job.input)?;
        let mut session = Session::new(job.role, job.model, job.weights, options)?;
        let model_hash = job.model.public_hash();
        let session_id = {
            let mut h = blake3::Hasher::new();
            h.update(model_hash.as_bytes());
            h.update(&job.keys.server_helper.unwrap_or_default());
            *h.finalize().as_bytes()
        };
        let mut ctx = Ctx::new(job.role, job.transport, job.keys);
        exchange_contributions(&mut ctx, job.keys, &model_hash, job.inference)?;
        session.setup_cached(&mut ctx, &self.cache, session_id)?;
        let pre = session.offline(&mut ctx)?;
        session.online(&mut ctx, pre, job.input)
    }
}

impl SecureBackend for SecureNn {
    fn name(&self) -> &str {
        "securenn"
    }

    fn version(&self) -> String {
        concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn description(&self) -> &str {
        "three-party SecureNN-style protocol: exact or approximate DReLU, block ReLU, weights masked once per session"
    }

    fn canonical_options(&self, options: &str) -> Result<String, BackendError> {
        Ok(Options::parse(options)?.canonical())
    }

    fn max_message(&self, model: &SecureModel, options: &str) -> Result<Option<u64>, BackendError> {
        let plan = crate::exec::Plan::new(model, Options::parse(options)?)?;
        Ok(Some(plan.max_message_bytes(model)))
    }

    fn run(&self, job: PartyJob<'_>) -> Result<PartyOutput, BackendError> {
        self.run_party(job).map_err(BackendError::from)
    }

    fn open_session<'a>(
        &'a self,
        job: SessionJob<'a>,
        transport: &mut dyn Transport,
    ) -> Result<Box<dyn PartySession + 'a>, BackendError> {
        let options = Options::parse(job.options)?;
        let mut session = Session::new(job.role, job.model, job.weights, options)?;
        let mut ctx = Ctx::new(job.role, transport, job.keys);
        session.setup(&mut ctx)?;
        Ok(Box::new(PhasedSession {
            role: job.role,
            model: job.model,
            session,
            keys: job.keys,
            model_hash: job.model.public_hash(),
            pending: None,
        }))
    }

    fn label_only_options(&self, options: &str) -> Result<Option<String>, BackendError> {
        let mut o = Options::parse(options)?;
        o.reveal = crate::options::Reveal::Label;
        Ok(Some(o.canonical()))
    }

    fn expected_cost(
        &self,
        model: &SecureModel,
        options: &str,
    ) -> Result<Option<ExpectedCost>, BackendError> {
        let plan = crate::exec::Plan::new(model, Options::parse(options)?)?;
        let (inference_bytes, setup_bytes) = plan.closed_form_bytes(model);
        Ok(Some(ExpectedCost {
            setup_bytes,
            inference_bytes,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cache_keeps_the_most_recently_used() {
        let mut cache = SessionCache::default();
        let id = |i: u8| [i; 32];
        for i in 0..SESSIONS_KEPT as u8 {
            cache.put(id(i), Arc::new(Vec::new()));
        }
        // Session 0 is used again, so session 1 is the least recently used when one more comes.
        assert!(cache.get(&id(0)).is_some());
        cache.put(id(100), Arc::new(Vec::new()));
        assert_eq!(cache.entries.len(), SESSIONS_KEPT);
        assert!(cache.get(&id(1)).is_none());
        assert!(cache.get(&id(0)).is_some());
        assert!(cache.get(&id(100)).is_some());
        // Putting a kept session again replaces it without evicting another.
        cache.put(id(2), Arc::new(vec![None]));
        assert_eq!(cache.entries.len(), SESSIONS_KEPT);
        assert_eq!(cache.get(&id(2)).map(|m| m.len()), Some(1));
    }
}
