//! One party's view of a running protocol: its role, its transport, the pairwise PRG keys of
//! the session and of the current inference, and the layer being run (for error messages and
//! metering).
//!
//! Correlated randomness (digest §6.3, without the reference's fixed seeds): two parties that
//! share a session key derive identical [`Prg`] streams from
//! `(key, purpose label, stream id)`; the stream id encodes the graph node and a sub-job, so
//! the order in which nodes draw never matters (no "fetcher" replaying the draw order,
//! digest §10.19). Per-inference keys ([`InferenceKeys`], from `knapsec-runtime`) are
//! `BLAKE3-keyed(session key, label ‖ model hash ‖ inference index ‖ c_a ‖ c_b)`, where `c_a`,
//! `c_b` are fresh 16-byte contributions that *both* members of the pair draw from the OS RNG
//! for every inference ([`crate::backend::exchange_contributions`]): no party alone, in
//! particular not a client replaying old values, can make an inference's masks repeat. Only
//! the weight masks of the linear layers use the session key itself (they are fixed per
//! session, see [`crate::linear`]).
//!
//! Messages are raw little-endian `u64` ring elements or bytes (values mod 67); every receive
//! checks the length it expects.

use crate::error::{Result, SecureNnError};
use knapsec_core::backend::SessionKeys;
use knapsec_core::transport::{Role, Transport};
use knapsec_ring::Prg;

pub use knapsec_runtime::randomness::{InferenceKeys, Pair};

/// Stream id of sub-job `job` of graph node `node`.
pub fn stream(node: usize, job: usize) -> u64 {
    ((node as u64) << 24) | job as u64
}

/// One party's protocol context.
pub struct Ctx<'a> {
    /// The party this context runs.
    pub role: Role,
    transport: &'a mut dyn Transport,
    session: [Option<[u8; 32]>; 3],
    inference: [Option<[u8; 32]>; 3],
    layer: String,
    op: &'static str,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ctx({}, layer {:?})", self.role, self.layer)
    }
}

impl<'a> Ctx<'a> {
    /// A context for `role`; the keys of the pairs `role` is not in are ignored.
    pub fn new(role: Role, transport: &'a mut dyn Transport, keys: &SessionKeys) -> Self {
        let mut session = [None; 3];
        for p in [Pair::ClientServer, Pair::ClientHelper, Pair::ServerHelper] {
            let (a, b) = p.roles();
            if role == a || role == b {
                session[p.index()] = keys.with(a, b);
            }
        }
        Ctx {
            role,
            transport,
            session,
            inference: [None; 3],
            layer: String::new(),
            op: "",
        }
    }

    /// Sets the per-inference keys (of the pairs this party is in).
    pub fn set_inference(&mut self, keys: &InferenceKeys) {
        for i in 0..3 {
            self.inference[i] = self.session[i].and(keys.0[i]);
        }
    }

    /// Test helper: per-inference keys from fixed contributions.
    #[cfg(test)]
    pub fn set_nonce(&mut self, nonce: &[u8; 16]) {
        let contributions = [*nonce; 3];
        let keys = InferenceKeys::derive(
            crate::backend::KEY_LABEL,
            &self.session,
            "test",
            0,
            &contributions,
        );
        self.set_inference(&keys);
    }

    /// The transport (for the runtime's own messages, e.g. the per-inference contributions).
    pub fn transport(&mut self) -> &mut dyn Transport {
        &mut *self.transport
    }

    /// The session keys this party holds, by [`Pair`] (client–server, client–helper,
    /// server–helper).
    pub fn session_keys(&self) -> &[Option<[u8; 32]>; 3] {
        &self.session
    }

    /// Names the layer and op of the following messages.
    pub fn scope(&mut self, layer: &str, op: &'static str) {
        if self.layer != layer {
            self.layer = layer.to_string();
        }
        self.op = op;
        self.transport.set_scope(layer, op);
    }

    /// The current layer name.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    fn key(&self, pair: Pair, per_inference: bool) -> Result<[u8; 32]> {
        let k = if per_inference {
            self.inference[pair.index()]
        } else {
            self.session[pair.index()]
        };
        k.ok_or_else(|| SecureNnError::Input {
            role: self.role,
            message: format!(
                "no {} key for the pair {:?}{}",
                if per_inference {
                    "per-inference"
                } else {
                    "session"
                },
                pair,
                if per_inference && self.session[pair.index()].is_some() {
                    " (no per-inference contributions yet)"
                } else {
                    ""
                }
            ),
        })
    }

    /// The per-inference stream `(purpose, stream)` shared with the other party of `pair`.
    pub fn prg(&self, pair: Pair, purpose: &str, stream: u64) -> Result<Prg> {
        Ok(Prg::with_stream(&self.key(pair, true)?, purpose, stream))
    }

    /// The session-wide stream `(purpose, stream)` (fixed across inferences).
    pub fn session_prg(&self, pair: Pair, purpose: &str, stream: u64) -> Result<Prg> {
        Ok(Prg::with_stream(&self.key(pair, false)?, purpose, stream))
    }

    fn transport_err(&self, source: knapsec_core::transport::TransportError) -> SecureNnError {
        SecureNnError::Transport {
            role: self.role,
            layer: self.layer.clone(),
            op: self.op,
            source,
        }
    }

    fn malformed(&self, peer: Role, message: String) -> SecureNnError {
        SecureNnError::Malformed {
            role: self.role,
            peer,
            layer: self.layer.clone(),
            op: self.op,
            message,
        }
    }

    /// Sends raw bytes.
    pub fn send_bytes(&mut self, to: Role, bytes: Vec<u8>) -> Result<()> {
        self.transport
            .send(to, bytes)
            .map_err(|e| self.transport_err(e))
    }

    /// Receives raw bytes, checking the length.
    pub fn recv_bytes(&mut self, from: Role, expected: usize) -> Result<Vec<u8>> {
        let msg = self
            .transport
            .recv(from)
            .map_err(|e| self.transport_err(e))?;
        if msg.len() != expected {
            return Err(self.malformed(from, format!("{} bytes, expected {expected}", msg.len())));
        }
        Ok(msg)
    }

    /// Sends ring elements (8 bytes each, little-endian).
    pub fn send_u64(&mut self, to: Role, values: &[u64]) -> Result<()> {
        let bytes = if cfg!(target_endian = "little") {
            bytemuck::cast_slice::<u64, u8>(values).to_vec()
        } else {
            values.iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        self.send_bytes(to, bytes)
    }

    /// Receives exactly `n` ring elements.
    pub fn recv_u64(&mut self, from: Role, n: usize) -> Result<Vec<u64>> {
        let bytes = self.recv_bytes(from, n * 8)?;
        // One pass into a fresh allocation (a zeroed one would cost a pass more).
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    /// Wraps a ring-kernel error with this party's context.
    pub fn ring_err(&self, source: knapsec_ring::RingError) -> SecureNnError {
        SecureNnError::Ring {
            role: self.role,
            layer: self.layer.clone(),
            source,
        }
    }
}
