//! The `fss` backend plugin: runs one party of one inference over any
//! [`Transport`](knapsec_core::transport::Transport), registered with `inventory`.
//!
//! Message flow of one [`SecureBackend::run`]: the per-inference contributions and keys
//! (`securenn`'s [`exchange_contributions`]: every party contributes fresh randomness to each
//! inference's pair keys); the helper tells the server (1 byte) whether it still holds this
//! session's masked weights, and if not the server sends them (once per session); then the
//! offline phase (the helper deals the comparison keys and masks, [`crate::gate`]; the
//! client's shares of the linear layers, [`crate::exec`]) and the online phase. The helper
//! keeps the masked weights of its [`SESSIONS_KEPT`] most recently used sessions.

use crate::error::{FssError, Result};
use crate::exec::Session;
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend};
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use knapsec_ring::Prg;
use knapsec_securenn::backend::exchange_contributions;
use knapsec_securenn::ctx::Ctx;
use knapsec_securenn::linear::HelperWeights;
use knapsec_securenn::{Options, SecureNnError};
use rand::TryRngCore;
use std::sync::{Arc, Mutex};

/// The masked weights of one session's linear layers.
type Masked = Arc<Vec<Option<HelperWeights>>>;

/// Sessions whose masked weights a helper keeps.
pub const SESSIONS_KEPT: usize = 4;

/// The function-secret-sharing backend.
#[derive(Debug, Default)]
pub struct Fss {
    /// Helper: masked weights of the most recently used sessions, least recent first.
    cache: Mutex<Vec<([u8; 32], Masked)>>,
}

knapsec_core::inventory::submit! {
    BackendRegistration { name: "fss", provider: "knapsec-fss", make: || Arc::new(Fss::default()) }
}

impl Fss {
    fn cached(&self, id: &[u8; 32]) -> Option<Masked> {
        let mut c = self.cache.lock().ok()?;
        let i = c.iter().position(|(k, _)| k == id)?;
        let e = c.remove(i);
        let m = Arc::clone(&e.1);
        c.push(e);
        Some(m)
    }

    fn keep(&self, id: [u8; 32], masked: Masked) {
        if let Ok(mut c) = self.cache.lock() {
            c.retain(|(k, _)| *k != id);
            if c.len() >= SESSIONS_KEPT {
                c.remove(0);
            }
            c.push((id, masked));
        }
    }

    fn run_party(&self, job: PartyJob<'_>) -> Result<PartyOutput> {
        let options = Options::parse(job.options)?;
        if job.role == Role::Client {
            let numel: u32 = job.model.input_shape().iter().product();
            let n = job.input.map_or(0, <[f32]>::len);
            if n != numel as usize {
                return Err(SecureNnError::Input {
                    role: Role::Client,
                    message: format!(
                        "input has {n} values, the model expects {numel} ({:?})",
                        job.model.input_shape()
                    ),
                }
                .into());
            }
        }
        let mut session = Session::new(job.role, job.model, job.weights, options)?;
        let model_hash = job.model.public_hash();
        let session_id = {
            let mut h = blake3::Hasher::new();
            h.update(b"knapsec-fss session");
            h.update(model_hash.as_bytes());
            h.update(&job.keys.server_helper.unwrap_or_default());
            *h.finalize().as_bytes()
        };
        let mut ctx = Ctx::new(job.role, job.transport, job.keys);
        exchange_contributions(&mut ctx, job.keys, &model_hash, job.inference)?;
        ctx.scope("session", "setup");
        match job.role {
            Role::Helper => {
                let cached = self.cached(&session_id);
                ctx.send_bytes(Role::Server, vec![u8::from(cached.is_some())])?;
                match cached {
                    Some(m) => session.set_masked(m.as_ref().clone()),
                    None => {
                        session.setup(&mut ctx)?;
                        self.keep(session_id, Arc::new(session.masked().to_vec()));
                    }
                }
            }
            Role::Server => {
                let flag = ctx.recv_bytes(Role::Helper, 1)?;
                if flag[0] == 0 {
                    session.setup(&mut ctx)?;
                }
            }
            Role::Client => {}
        }
        let mut private = if job.role == Role::Helper {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .map_err(|e| SecureNnError::Input {
                    role: Role::Helper,
                    message: format!("the OS random generator failed: {e}"),
                })?;
            Some(Prg::new(&seed, "fss/dealer"))
        } else {
            None
        };
        let mut pre = session.offline(&mut ctx, private.as_mut())?;
        drop(private.take());
        session.online(&mut ctx, &mut pre, job.input)
    }
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
        self.run_party(job).map_err(BackendError::from)
    }
}
