//! The `securenn` backend plugin: runs one party of one inference over any [`Transport`]
//! (in-memory or TCP), registered with `inventory`.
//!
//! Message flow of one [`SecureBackend::run`]: the client sends a fresh 16-byte nonce to the
//! server and the helper (per-inference PRG keys, [`crate::ctx`]); the helper tells the
//! server (1 byte) whether it still holds this session's masked weights, and if not the
//! server sends them (the setup of [`crate::linear`], once per session); then the offline and
//! the online phases of [`crate::exec`]. The helper keeps the masked weights of each session
//! in memory, keyed by the model's public hash and the server–helper session key.

use crate::ctx::Ctx;
use crate::error::{Result, SecureNnError};
use crate::exec::{NONCE_LEN, Session};
use crate::linear::HelperWeights;
use crate::options::Options;
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend};
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The helper's masked weights per session id.
type SessionCache = HashMap<[u8; 32], Arc<Vec<Option<HelperWeights>>>>;

/// The SecureNN-style backend.
#[derive(Debug, Default)]
pub struct SecureNn {
    /// Helper: masked weights per session.
    cache: Mutex<SessionCache>,
}

knapsec_core::inventory::submit! {
    BackendRegistration { name: "securenn", provider: "knapsec-securenn", make: || Arc::new(SecureNn::default()) }
}

/// Exchanges the nonce (client → server, helper), sets it in `ctx` and returns it.
pub fn exchange_nonce(ctx: &mut Ctx<'_>) -> Result<[u8; NONCE_LEN]> {
    ctx.scope("session", "nonce");
    let nonce: [u8; NONCE_LEN] = match ctx.role {
        Role::Client => {
            let n: [u8; NONCE_LEN] = rand::random();
            ctx.send_bytes(Role::Server, n.to_vec())?;
            ctx.send_bytes(Role::Helper, n.to_vec())?;
            n
        }
        _ => ctx
            .recv_bytes(Role::Client, NONCE_LEN)?
            .try_into()
            .expect("length checked"),
    };
    ctx.set_nonce(&nonce);
    Ok(nonce)
}

impl SecureNn {
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
                });
            }
        }
        let mut session = Session::new(job.role, job.model, job.weights, options)?;
        let session_id = {
            let mut h = blake3::Hasher::new();
            h.update(job.model.public_hash().as_bytes());
            h.update(&job.keys.server_helper.unwrap_or_default());
            *h.finalize().as_bytes()
        };
        let mut ctx = Ctx::new(job.role, job.transport, job.keys);
        exchange_nonce(&mut ctx)?;
        ctx.scope("session", "setup");
        match job.role {
            Role::Helper => {
                let cached = self
                    .cache
                    .lock()
                    .map_err(|_| SecureNnError::Thread {
                        role: Role::Helper,
                        message: "cache poisoned".into(),
                    })?
                    .get(&session_id)
                    .cloned();
                ctx.send_bytes(Role::Server, vec![u8::from(cached.is_some())])?;
                match cached {
                    Some(m) => session.set_masked(m.as_ref().clone()),
                    None => {
                        session.setup(&mut ctx)?;
                        if let Ok(mut c) = self.cache.lock() {
                            c.insert(session_id, Arc::new(session.masked().to_vec()));
                        }
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
        let pre = session.offline(&mut ctx)?;
        session.online(&mut ctx, &pre, job.input)
    }
}

impl SecureBackend for SecureNn {
    fn name(&self) -> &str {
        "securenn"
    }

    fn description(&self) -> &str {
        "three-party SecureNN-style protocol: exact or approximate DReLU, block ReLU, weights masked once per session"
    }

    fn canonical_options(&self, options: &str) -> Result<String, BackendError> {
        Ok(Options::parse(options)?.canonical())
    }

    fn run(&self, job: PartyJob<'_>) -> Result<PartyOutput, BackendError> {
        self.run_party(job).map_err(BackendError::from)
    }
}
