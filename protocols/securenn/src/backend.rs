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
use crate::exec::Session;
use crate::linear::HelperWeights;
use crate::options::Options;
use knapsec_core::backend::{BackendError, PartyJob, PartyOutput, SecureBackend, SessionKeys};
use knapsec_core::registry::BackendRegistration;
use knapsec_core::transport::Role;
use rand::TryRngCore;
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

/// Bytes of each party's per-inference contribution.
pub const CONTRIBUTION_LEN: usize = 16;

/// Exchanges this inference's contributions: every party draws a fresh 16-byte value from the
/// OS RNG and sends it to both others (one flight, six messages, 96 bytes in all), refuses a
/// value a peer already sent in this session (`keys.contributions`), and derives the
/// per-inference key of each pair it is in from both members' values, the model's public
/// hash and the inference index (see [`crate::ctx`]). Returns the keys (also set in `ctx`).
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
    ctx.scope("session", "contribution");
    let me = ctx.role;
    let mut mine = [0u8; CONTRIBUTION_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut mine)
        .map_err(|e| SecureNnError::Input {
            role: me,
            message: format!("the OS random generator failed: {e}"),
        })?;
    let mut all = [[0u8; CONTRIBUTION_LEN]; 3];
    all[me.index()] = mine;
    for peer in me.others() {
        ctx.send_bytes(peer, mine.to_vec())?;
    }
    for peer in me.others() {
        let c: [u8; CONTRIBUTION_LEN] = ctx
            .recv_bytes(peer, CONTRIBUTION_LEN)?
            .try_into()
            .expect("length checked");
        if !keys.contributions.fresh(me, peer, c) {
            return Err(SecureNnError::Malformed {
                role: me,
                peer,
                layer: "session".into(),
                op: "contribution",
                message: format!(
                    "the {peer} repeated a per-inference contribution it already sent in this session (inference {index}); refused"
                ),
            });
        }
        all[peer.index()] = c;
    }
    let derived = InferenceKeys::derive(ctx.session_keys(), model_hash, index, &all);
    ctx.set_inference(&derived);
    Ok(derived)
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
        let model_hash = job.model.public_hash();
        let session_id = {
            let mut h = blake3::Hasher::new();
            h.update(model_hash.as_bytes());
            h.update(&job.keys.server_helper.unwrap_or_default());
            *h.finalize().as_bytes()
        };
        let mut ctx = Ctx::new(job.role, job.transport, job.keys);
        exchange_contributions(&mut ctx, job.keys, &model_hash, job.inference)?;
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

    fn version(&self) -> String {
        concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).to_string()
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
