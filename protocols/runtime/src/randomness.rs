//! Per-session and per-inference randomness (DESIGN §5; digest §6.3 without the reference's
//! fixed seeds), the same for every backend.
//!
//! Each pair of parties shares a 32-byte session key, agreed per session by the transport's
//! key agreement ([`SessionKeys`]). Per inference, every party draws a fresh 16-byte
//! contribution from the OS RNG and sends it to both others ([`exchange_contributions`]: one
//! flight, six messages, 96 bytes); each pair's key of inference `i` is
//! `BLAKE3-keyed(session key, label ‖ model hash ‖ i ‖ c_a ‖ c_b)` with the contributions
//! `c_a`, `c_b` of the pair's two members ([`InferenceKeys::derive`]). No party alone, in
//! particular not a client replaying old values, can make an inference's randomness repeat:
//! a contribution a peer already sent in the session is refused
//! ([`SessionKeys::contributions`]). The label separates backends (and versions of one), so
//! two backends never derive the same keys.

use crate::error::RuntimeError;
use knapsec_core::backend::SessionKeys;
use knapsec_core::transport::{Role, Transport};
use rand::TryRngCore;

/// Bytes of each party's per-inference contribution.
pub const CONTRIBUTION_LEN: usize = 16;

/// A pair of parties that shares a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pair {
    /// The client and the server.
    ClientServer,
    /// The client and the helper.
    ClientHelper,
    /// The server and the helper.
    ServerHelper,
}

impl Pair {
    /// The three pairs, in index order.
    pub const ALL: [Pair; 3] = [Pair::ClientServer, Pair::ClientHelper, Pair::ServerHelper];

    /// Index of the pair (0, 1, 2 in [`Pair::ALL`] order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The two members of the pair, in role order.
    pub fn roles(self) -> (Role, Role) {
        match self {
            Pair::ClientServer => (Role::Client, Role::Server),
            Pair::ClientHelper => (Role::Client, Role::Helper),
            Pair::ServerHelper => (Role::Server, Role::Helper),
        }
    }

    /// True if `role` is one of the pair.
    pub fn has(self, role: Role) -> bool {
        let (a, b) = self.roles();
        role == a || role == b
    }
}

/// The session keys `role` holds, by [`Pair`] index (`None` for the pair it is not in).
pub fn session_pair_keys(role: Role, keys: &SessionKeys) -> [Option<[u8; 32]>; 3] {
    let mut out = [None; 3];
    for p in Pair::ALL {
        if p.has(role) {
            let (a, b) = p.roles();
            out[p.index()] = keys.with(a, b);
        }
    }
    out
}

/// The per-inference keys of the pairs a party is in, by [`Pair`] index.
#[derive(Clone, Copy, Default)]
pub struct InferenceKeys(pub [Option<[u8; 32]>; 3]);

impl std::fmt::Debug for InferenceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InferenceKeys { .. }")
    }
}

impl InferenceKeys {
    /// Derives each pair's key of inference `index` from its session key, the backend's
    /// `label`, the model's public hash and the contributions of the pair's two members
    /// (`contributions` by role index; the entry of a party outside a pair is not used for
    /// it).
    pub fn derive(
        label: &[u8],
        session: &[Option<[u8; 32]>; 3],
        model_hash: &str,
        index: u64,
        contributions: &[[u8; CONTRIBUTION_LEN]; 3],
    ) -> Self {
        let mut out = [None; 3];
        for p in Pair::ALL {
            let (a, b) = p.roles();
            out[p.index()] = session[p.index()].map(|k| {
                let mut h = blake3::Hasher::new_keyed(&k);
                h.update(label);
                h.update(&(model_hash.len() as u64).to_le_bytes());
                h.update(model_hash.as_bytes());
                h.update(&index.to_le_bytes());
                h.update(&contributions[a.index()]);
                h.update(&contributions[b.index()]);
                *h.finalize().as_bytes()
            });
        }
        InferenceKeys(out)
    }

    /// The key of `pair`, if this party is in it.
    pub fn get(&self, pair: Pair) -> Option<[u8; 32]> {
        self.0[pair.index()]
    }
}

/// Exchanges inference `index`'s contributions over `transport` (scope `session` /
/// `contribution`): this party draws a fresh value from the OS RNG, sends it to both others,
/// refuses a value a peer already sent in this session (`keys.contributions`), and derives
/// the keys of the pairs it is in ([`InferenceKeys::derive`] with `label`).
///
/// # Errors
/// A peer repeating a contribution or sending one of the wrong size
/// ([`RuntimeError::Malformed`] naming it), the OS RNG failing, or the transport.
pub fn exchange_contributions(
    transport: &mut dyn Transport,
    keys: &SessionKeys,
    label: &[u8],
    model_hash: &str,
    index: u64,
) -> Result<InferenceKeys, RuntimeError> {
    const OP: &str = "contribution";
    transport.set_scope("session", OP);
    let me = transport.role();
    let mut mine = [0u8; CONTRIBUTION_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut mine)
        .map_err(|e| RuntimeError::Rng {
            role: me,
            message: e.to_string(),
        })?;
    let mut all = [[0u8; CONTRIBUTION_LEN]; 3];
    all[me.index()] = mine;
    let transport_err = |source| RuntimeError::Transport {
        role: me,
        op: OP,
        source,
    };
    for peer in me.others() {
        transport.send(peer, mine.to_vec()).map_err(transport_err)?;
    }
    for peer in me.others() {
        let msg = transport.recv(peer).map_err(transport_err)?;
        let c: [u8; CONTRIBUTION_LEN] =
            msg.as_slice()
                .try_into()
                .map_err(|_| RuntimeError::Malformed {
                    role: me,
                    peer,
                    op: OP,
                    message: format!("{} bytes, expected {CONTRIBUTION_LEN}", msg.len()),
                })?;
        if !keys.contributions.fresh(me, peer, c) {
            return Err(RuntimeError::Malformed {
                role: me,
                peer,
                op: OP,
                message: format!(
                    "the {peer} repeated a per-inference contribution it already sent in this session (inference {index}); refused"
                ),
            });
        }
        all[peer.index()] = c;
    }
    Ok(InferenceKeys::derive(
        label,
        &session_pair_keys(me, keys),
        model_hash,
        index,
        &all,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_net::memory_network;

    fn keys() -> SessionKeys {
        SessionKeys {
            client_server: Some([1; 32]),
            client_helper: Some([2; 32]),
            server_helper: Some([3; 32]),
            ..Default::default()
        }
    }

    fn exchange_all(k: &SessionKeys, index: u64) -> Vec<Result<InferenceKeys, RuntimeError>> {
        let ends = memory_network();
        std::thread::scope(|s| {
            let hs: Vec<_> = ends
                .into_iter()
                .map(|mut t| {
                    let k = k.clone();
                    s.spawn(move || exchange_contributions(&mut t, &k, b"test", "hash", index))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn the_members_of_each_pair_derive_the_same_fresh_key() {
        let r: Vec<InferenceKeys> = exchange_all(&keys(), 0)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let (c, s, h) = (&r[0], &r[1], &r[2]);
        assert_eq!(c.get(Pair::ClientServer), s.get(Pair::ClientServer));
        assert_eq!(c.get(Pair::ClientHelper), h.get(Pair::ClientHelper));
        assert_eq!(s.get(Pair::ServerHelper), h.get(Pair::ServerHelper));
        assert!(c.get(Pair::ServerHelper).is_none());
        assert_ne!(c.get(Pair::ClientServer), c.get(Pair::ClientHelper));
        // A second inference of the same session gets other keys.
        let again = exchange_all(&keys(), 0)
            .into_iter()
            .next()
            .unwrap()
            .unwrap();
        assert_ne!(again.get(Pair::ClientServer), c.get(Pair::ClientServer));
    }

    #[test]
    fn the_log_refuses_repeats_and_labels_separate_backends() {
        let k = keys();
        // A contribution the client already received from the server is refused the second
        // time.
        let contributions = [[9u8; CONTRIBUTION_LEN]; 3];
        assert!(
            k.contributions
                .fresh(Role::Client, Role::Server, contributions[1])
        );
        assert!(
            !k.contributions
                .fresh(Role::Client, Role::Server, contributions[1])
        );
        let derived = InferenceKeys::derive(
            b"a",
            &session_pair_keys(Role::Client, &k),
            "h",
            0,
            &contributions,
        );
        let other = InferenceKeys::derive(
            b"b",
            &session_pair_keys(Role::Client, &k),
            "h",
            0,
            &contributions,
        );
        assert_ne!(
            derived.get(Pair::ClientServer),
            other.get(Pair::ClientServer)
        );
    }
}
