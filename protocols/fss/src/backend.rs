//! The `fss` backend plugin: runs one party of one inference over any
//! [`Transport`](knapsec_core::transport::Transport), registered with `inventory`.
//!
//! Phases ([`SecureBackend::open_session`], [`PartySession`]): once per session the helper
//! tells the server (1 byte) whether it still holds this session's masked weights, and if not
//! the server sends them; per inference, offline: the contributions and keys (`securenn`'s
//! [`exchange_keyed`] under this backend's [`KEY_LABEL`]: every party contributes fresh
//! randomness to each inference's pair keys), then the offline work (the helper deals the
//! comparison keys and masks, [`crate::gate`]; the client's shares of the linear layers,
//! [`crate::exec`]) and the online phase. The helper keeps the masked weights of its
//! [`SESSIONS_KEPT`] most recently used sessions.

use crate::error::{FssError, Result};
use crate::exec::{Plan, Preprocessing, Session};
use knapsec_core::backend::{
    BackendError, ExpectedCost, PartyJob, PartyOutput, PartySession, SecureBackend, SessionJob,
    SessionKeys, run_phases,
};
use knapsec_core::graph::SecureModel;
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use knapsec_core::transport::Transport;
use knapsec_ring::Prg;
use knapsec_securenn::backend::{SessionCache, exchange_keyed};
use knapsec_securenn::ctx::{Ctx, InferenceKeys};
use knapsec_securenn::{Options, SecureNnError, profile};
use rand::TryRngCore;
use std::sync::{Arc, Mutex};

/// The label of this backend's per-inference key derivation (distinct from `securenn`'s, so
/// that the two backends never draw the same streams from one session's keys).
pub const KEY_LABEL: &[u8] = b"knapsec-fss inference key v1";

/// Sessions whose masked weights a helper keeps (`securenn`'s limit).
pub use knapsec_securenn::backend::SESSIONS_KEPT;

/// The function-secret-sharing backend.
#[derive(Debug, Default)]
pub struct Fss {
    /// Helper: masked weights of the most recently used sessions, least recent first.
    cache: Mutex<SessionCache>,
}

knapsec_core::inventory::submit! {
    BackendRegistration { name: "fss", provider: "knapsec-fss", make: || Arc::new(Fss::default()) }
}

impl Fss {
    /// The session's setup: the helper says whether it holds the masked weights, the server
    /// sends them if not.
    fn open<'a>(&self, job: SessionJob<'a>, transport: &mut dyn Transport) -> Result<Session<'a>> {
        let options = Options::parse(job.options)?;
        let mut session = Session::from(knapsec_securenn::Session::new(
            job.role,
            job.model,
            job.weights,
            options,
        )?);
        let session_id = {
            let mut h = blake3::Hasher::new();
            h.update(b"knapsec-fss session");
            h.update(job.model.public_hash().as_bytes());
            h.update(&job.keys.server_helper.unwrap_or_default());
            *h.finalize().as_bytes()
        };
        let mut ctx = Ctx::new(job.role, transport, job.keys);
        session
            .shared_mut()
            .setup_cached(&mut ctx, &self.cache, session_id)?;
        Ok(session)
    }
}

/// One party's state for the inferences of a session.
struct FssSession<'a> {
    session: Session<'a>,
    keys: &'a SessionKeys,
    model_hash: String,
    /// The preprocessing of the inference whose offline phase ran last, with its keys.
    pre: Option<(u64, Preprocessing, InferenceKeys)>,
}

impl FssSession<'_> {
    fn offline(&mut self, inference: u64, transport: &mut dyn Transport) -> Result<()> {
        let role = self.session.role;
        let mut ctx = Ctx::new(role, transport, self.keys);
        let ik = exchange_keyed(&mut ctx, self.keys, KEY_LABEL, &self.model_hash, inference)?;
        let mut private = if role == Role::Helper {
            // The dealer's own randomness (the masked decision bits), fresh per inference.
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .map_err(|e| SecureNnError::Input {
                    role,
                    message: format!("the OS random generator failed: {e}"),
                })?;
            Some(Prg::new(&seed, "fss/dealer"))
        } else {
            None
        };
        let pre = self.session.offline(&mut ctx, private.as_mut())?;
        self.pre = Some((inference, pre, ik));
        Ok(())
    }

    fn online(
        &mut self,
        inference: u64,
        input: Option<&[f32]>,
        transport: &mut dyn Transport,
    ) -> Result<PartyOutput> {
        let role = self.session.role;
        let (done, mut pre, ik) = self.pre.take().ok_or_else(|| SecureNnError::Input {
            role,
            message: format!("inference {inference}: online phase without its offline phase"),
        })?;
        if done != inference {
            return Err(SecureNnError::Input {
                role,
                message: format!(
                    "inference {inference}: the offline phase ran for inference {done}"
                ),
            }
            .into());
        }
        let mut ctx = Ctx::new(role, transport, self.keys);
        ctx.set_inference(&ik);
        self.session.online(&mut ctx, &mut pre, input)
    }
}

impl PartySession for FssSession<'_> {
    fn offline(
        &mut self,
        inference: u64,
        transport: &mut dyn Transport,
    ) -> std::result::Result<(), BackendError> {
        FssSession::offline(self, inference, transport).map_err(BackendError::from)
    }

    fn online(
        &mut self,
        inference: u64,
        input: Option<&[f32]>,
        transport: &mut dyn Transport,
    ) -> std::result::Result<PartyOutput, BackendError> {
        FssSession::online(self, inference, input, transport).map_err(BackendError::from)
    }

    fn take_cpu_profile(&mut self) -> Vec<(&'static str, f64)> {
        profile::take().by_name()
    }
}

/// The plan of `model` under the RON `options`.
fn plan(model: &SecureModel, options: &str) -> Result<Plan> {
    Plan::new(model, Options::parse(options)?)
}

impl SecureBackend for Fss {
    fn name(&self) -> &str {
        "fss"
    }

    fn version(&self) -> String {
        concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).to_string()
    }

    fn description(&self) -> &str {
        "three-party protocol in which the helper deals function-secret-sharing keys (DCF comparisons): two online flights per ReLU layer, linear layers free online"
    }

    fn canonical_options(&self, options: &str) -> std::result::Result<String, BackendError> {
        Ok(Options::parse(options).map_err(FssError::from)?.canonical())
    }

    fn run(&self, job: PartyJob<'_>) -> std::result::Result<PartyOutput, BackendError> {
        run_phases(self, job)
    }

    fn open_session<'a>(
        &'a self,
        job: SessionJob<'a>,
        transport: &mut dyn Transport,
    ) -> std::result::Result<Box<dyn PartySession + 'a>, BackendError> {
        let session = self.open(job, transport)?;
        Ok(Box::new(FssSession {
            session,
            keys: job.keys,
            model_hash: job.model.public_hash(),
            pre: None,
        }))
    }

    fn max_message(
        &self,
        model: &SecureModel,
        options: &str,
    ) -> std::result::Result<Option<u64>, BackendError> {
        Ok(Some(plan(model, options)?.max_message(model)))
    }

    fn label_only_options(
        &self,
        options: &str,
    ) -> std::result::Result<Option<String>, BackendError> {
        let mut o = Options::parse(options).map_err(FssError::from)?;
        o.reveal = knapsec_securenn::Reveal::Label;
        Ok(Some(o.canonical()))
    }

    fn expected_cost(
        &self,
        model: &SecureModel,
        options: &str,
    ) -> std::result::Result<Option<ExpectedCost>, BackendError> {
        let cf = plan(model, options)?.closed_form(model);
        Ok(Some(ExpectedCost {
            // the helper's one-byte "setup needed" flag included (a fresh session)
            setup_bytes: cf.setup + 1,
            offline_bytes: Some(cf.offline),
            online_bytes: Some(cf.online),
            inference_bytes: cf.offline + cf.online,
            online_rounds: Some(cf.online_rounds),
            // what client and server hold between the phases: keys, masks, shares
            key_bytes: cf.held_bytes,
        }))
    }
}
