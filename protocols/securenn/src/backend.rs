//! The `securenn` backend plugin: runs one party of one inference over any [`Transport`]
//! (in-memory or TCP), registered with `inventory`.
//!
//! Message flow of one [`SecureBackend::run`]: the client sends a fresh 16-byte nonce to the
//! server and the helper (per-inference PRG keys, [`crate::ctx`]); the helper tells the
//! server (1 byte) whether it still holds this session's masked weights, and if not the
//! server sends them (the setup of [`crate::linear`], once per session); then the offline and
//! the online phases of [`crate::exec`]. The helper keeps the masked weights of each session
//! in memory, keyed by the model's public hash and the server–helper session key, for the
//! [`SESSIONS_KEPT`] most recently used sessions (an evicted session repeats its setup).

use crate::ctx::Ctx;
use crate::error::{Result, SecureNnError};
use crate::exec::{NONCE_LEN, Session};
use crate::linear::HelperWeights;
use crate::options::Options;
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend};
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use std::sync::{Arc, Mutex};

/// The masked weights of one session's linear layers.
type Masked = Arc<Vec<Option<HelperWeights>>>;

/// Sessions whose masked weights a helper keeps (a ResNet50's are about 400 MB: `F` and the
/// ring kernel's second operands of it, made once per session).
pub const SESSIONS_KEPT: usize = 4;

/// The helper's masked weights of its most recently used sessions, least recent first: a
/// helper serving many sessions keeps at most [`SESSIONS_KEPT`] of them.
#[derive(Debug, Default)]
struct SessionCache {
    entries: Vec<([u8; 32], Masked)>,
}

impl SessionCache {
    /// The weights of session `id`, which becomes the most recently used.
    fn get(&mut self, id: &[u8; 32]) -> Option<Masked> {
        let i = self.entries.iter().position(|(k, _)| k == id)?;
        let entry = self.entries.remove(i);
        let masked = Arc::clone(&entry.1);
        self.entries.push(entry);
        Some(masked)
    }

    /// Keeps the weights of session `id`, dropping the least recently used beyond the limit.
    fn put(&mut self, id: [u8; 32], masked: Masked) {
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
                    .get(&session_id);
                ctx.send_bytes(Role::Server, vec![u8::from(cached.is_some())])?;
                match cached {
                    Some(m) => session.set_masked(m.as_ref().clone()),
                    None => {
                        session.setup(&mut ctx)?;
                        if let Ok(mut c) = self.cache.lock() {
                            c.put(session_id, Arc::new(session.masked().to_vec()));
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
