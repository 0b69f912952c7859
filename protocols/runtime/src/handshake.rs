//! The session handshake between parties, inside the authenticated channel (in the spirit of
//! nushell's versioned plugin hello), and the derivation of the session's PRG keys.
//!
//! Right after the Noise handshake both ends of every connection send a [`Hello`]: protocol
//! version, backend name and canonical options, the hash of the secure model's public part
//! ([`SecureModel::public_hash`](knapsec_core::graph::SecureModel::public_hash)), the session
//! id chosen by the client, and a fresh 32-byte secret nonce. Each party compares every
//! peer's hello with its own, so all three pairs are compared; the first difference stops
//! the session with an error that says what differs, e.g. "server's model hash abc… differs
//! from client's def…".
//!
//! Session keys (digest §6.3 and §10.12: the reference seeds its PRGs with the constants
//! 0…5): the key a pair shares is derived per connection from the Noise handshake hash and
//! both hellos' secret nonces (which only travel encrypted), domain-separated by the pair's
//! roles; each party's private seed comes from the OS RNG per inference.

use knapsec_core::Role;
use knapsec_core::backend::SessionKeys;
use knapsec_net::error::{NetError, Result};
use knapsec_net::keys::hex;
use serde::{Deserialize, Serialize};

/// Version of the session protocol (hello, control messages, key derivation). Parties with
/// different versions refuse each other.
pub const PROTOCOL_VERSION: u32 = 2;

/// What one party tells another at the start of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The sender's software version (informational, not compared).
    pub software: String,
    /// The sender's role.
    pub role: Role,
    /// Chosen by the client, echoed by the others: ties the three connections together.
    pub session: [u8; 16],
    /// Registered name of the secure backend.
    pub backend: String,
    /// Identity and version of the backend's implementation
    /// ([`SecureBackend::version`](knapsec_core::backend::SecureBackend::version)).
    pub backend_version: String,
    /// Canonical form of the backend options.
    pub options: String,
    /// Hash of the secure model's public part.
    pub model_hash: String,
    /// Secret contribution to the pair's session key.
    pub nonce: [u8; 32],
}

impl Hello {
    /// A hello for `role` with a fresh nonce.
    ///
    /// # Errors
    /// If the OS RNG fails.
    pub fn new(
        role: Role,
        session: [u8; 16],
        backend: &str,
        backend_version: &str,
        options: &str,
        model_hash: &str,
    ) -> Result<Self> {
        Ok(Hello {
            protocol: PROTOCOL_VERSION,
            software: env!("CARGO_PKG_VERSION").to_string(),
            role,
            session,
            backend: backend.to_string(),
            backend_version: backend_version.to_string(),
            options: options.to_string(),
            model_hash: model_hash.to_string(),
            nonce: random_bytes()?,
        })
    }

    /// Serialised form (postcard).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a hello always serialises")
    }

    /// Parses a hello received from `peer`.
    ///
    /// # Errors
    /// [`NetError::Protocol`] if the bytes are not a hello (e.g. an older peer).
    pub fn from_bytes(bytes: &[u8], peer: Role) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| NetError::Protocol {
            peer,
            message: format!(
                "its hello cannot be read ({e}); is it running another knapsec version?"
            ),
        })
    }

    /// Checks `theirs` (received from `peer`) against this party's hello; the first
    /// difference is the error.
    ///
    /// # Errors
    /// [`NetError::Mismatch`] naming the field, both parties and both values;
    /// [`NetError::Protocol`] if the peer claims a role other than the one it authenticated as.
    pub fn check(&self, theirs: &Hello, peer: Role) -> Result<()> {
        if theirs.role != peer {
            return Err(NetError::Protocol {
                peer,
                message: format!(
                    "it authenticated as the {peer} but says it is the {}",
                    theirs.role
                ),
            });
        }
        let me = self.role;
        // Their values are peer text: cleaned before they reach a log or a terminal.
        let mismatch = |what, theirs: String, ours: String| NetError::Mismatch {
            what,
            peer,
            theirs: knapsec_net::error::clean_text(&theirs),
            me,
            ours,
        };
        if theirs.protocol != self.protocol {
            return Err(mismatch(
                "protocol version",
                format!("{} (knapsec {})", theirs.protocol, theirs.software),
                format!("{} (knapsec {})", self.protocol, self.software),
            ));
        }
        if theirs.backend != self.backend {
            return Err(mismatch(
                "backend",
                format!("{:?}", theirs.backend),
                format!("{:?}", self.backend),
            ));
        }
        if theirs.backend_version != self.backend_version {
            return Err(mismatch(
                "backend implementation",
                format!("{:?}", theirs.backend_version),
                format!("{:?}", self.backend_version),
            ));
        }
        if theirs.options != self.options {
            return Err(mismatch(
                "backend options",
                theirs.options.clone(),
                self.options.clone(),
            ));
        }
        if theirs.model_hash != self.model_hash {
            return Err(mismatch(
                "model hash",
                theirs.model_hash.clone(),
                self.model_hash.clone(),
            ));
        }
        if theirs.session != self.session {
            return Err(mismatch(
                "session id",
                hex(&theirs.session),
                hex(&self.session),
            ));
        }
        Ok(())
    }
}

/// Messages of the session loop: `Ready` from the server and the helper to the client once
/// all three connections of the session stand (the client sends nothing before both), then
/// `Infer`/`Batch`/`Done` from the client to the server and the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Run inference number `index` (0, 1, 2, … in order).
    Infer {
        /// The inference's index.
        index: u64,
    },
    /// The session is over.
    Done,
    /// The sender has all its connections of the session.
    Ready,
    /// Run the `count` images of a batch as inferences `index … index + count − 1` in
    /// lockstep ([`crate::batch`]); `count` is at least 2 and at most the deployment's
    /// `max_batch` (one image is an [`Control::Infer`]).
    Batch {
        /// The index of the batch's first image.
        index: u64,
        /// Images in the batch.
        count: u32,
    },
}

impl Control {
    /// Serialised form (postcard).
    pub fn to_bytes(self) -> Vec<u8> {
        postcard::to_stdvec(&self).expect("a control message always serialises")
    }

    /// Parses a control message from `peer`.
    ///
    /// # Errors
    /// [`NetError::Protocol`] if the bytes are not a control message.
    pub fn from_bytes(bytes: &[u8], peer: Role) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|e| NetError::Protocol {
            peer,
            message: format!("expected a control message ({e})"),
        })
    }
}

pub use knapsec_net::keys::random_bytes;

/// The key a pair shares for a whole session, from its connection's handshake hash and both
/// hellos (the initiator's first).
pub fn pair_key(
    a: Role,
    b: Role,
    handshake_hash: &[u8; 32],
    initiator: &Hello,
    responder: &Hello,
) -> [u8; 32] {
    let (lo, hi) = (a.min(b), a.max(b));
    let context = format!("knapsec-net {PROTOCOL_VERSION} session pair key {lo}-{hi}");
    let mut material = Vec::with_capacity(32 * 3 + 16);
    material.extend_from_slice(handshake_hash);
    material.extend_from_slice(&initiator.session);
    material.extend_from_slice(&initiator.nonce);
    material.extend_from_slice(&responder.nonce);
    blake3::derive_key(&context, &material)
}

/// The [`SessionKeys`] of a party holding `pairs` (its pair keys by peer): the pair keys of
/// the session, an empty log of per-inference contributions, and a private seed fresh from
/// the OS RNG (the party driver draws a new one before every inference). One value serves a
/// whole session, as [`SessionKeys`] specifies; a backend makes each inference's randomness
/// fresh itself (`securenn` derives every pair's per-inference keys from fresh contributions
/// of both members, and refuses a repeated one) and may cache per-session work under the
/// pair keys (`securenn`'s masked weights).
///
/// # Errors
/// If the OS RNG fails (private seed), or a pair does not include `me`.
pub fn session_keys(me: Role, pairs: &[(Role, [u8; 32])]) -> Result<SessionKeys> {
    let mut keys = SessionKeys {
        private: random_bytes()?,
        ..SessionKeys::default()
    };
    for &(peer, k) in pairs {
        match (me.min(peer), me.max(peer)) {
            (Role::Client, Role::Server) => keys.client_server = Some(k),
            (Role::Client, Role::Helper) => keys.client_helper = Some(k),
            (Role::Server, Role::Helper) => keys.server_helper = Some(k),
            _ => {
                return Err(NetError::Invalid(format!(
                    "no pair key between the {me} and the {peer}"
                )));
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(role: Role) -> Hello {
        Hello::new(
            role,
            [7; 16],
            "securenn",
            "knapsec-securenn 0.1.0",
            "(drelu: Exact)",
            "abc",
        )
        .unwrap()
    }

    #[test]
    fn mismatches_say_what_differs() {
        let client = hello(Role::Client);
        let mut server = hello(Role::Server);
        client.check(&server, Role::Server).unwrap();
        server.model_hash = "def".into();
        let e = client.check(&server, Role::Server).unwrap_err().to_string();
        assert_eq!(e, "server's model hash def differs from client's abc");
        let mut server = hello(Role::Server);
        server.options = "(drelu: Approx)".into();
        assert!(
            client
                .check(&server, Role::Server)
                .unwrap_err()
                .to_string()
                .contains("backend options")
        );
        let mut server = hello(Role::Server);
        server.backend_version = "knapsec-securenn 0.2.0".into();
        let e = client.check(&server, Role::Server).unwrap_err().to_string();
        assert!(
            e.contains("backend implementation") && e.contains("0.2.0") && e.contains("0.1.0"),
            "{e}"
        );
        let mut server = hello(Role::Server);
        server.options = format!("(evil: \"\x1b[2J\n{}\")", "x".repeat(10_000));
        let e = client.check(&server, Role::Server).unwrap_err().to_string();
        assert!(!e.chars().any(char::is_control) && e.len() < 1500, "{e:?}");
        let mut server = hello(Role::Server);
        server.protocol += 1;
        assert!(
            client
                .check(&server, Role::Server)
                .unwrap_err()
                .to_string()
                .contains(&format!("protocol version {}", PROTOCOL_VERSION + 1))
        );
        assert!(
            client
                .check(&hello(Role::Helper), Role::Server)
                .unwrap_err()
                .to_string()
                .contains("says it is")
        );
        assert_eq!(
            Hello::from_bytes(&client.to_bytes(), Role::Client).unwrap(),
            client
        );
        assert!(Hello::from_bytes(&[1, 2, 3], Role::Client).is_err());
    }

    #[test]
    fn keys_agree_per_pair_and_differ_otherwise() {
        let (c, s) = (hello(Role::Client), hello(Role::Server));
        let hh = [1u8; 32];
        let k_cs = pair_key(Role::Client, Role::Server, &hh, &c, &s);
        assert_eq!(k_cs, pair_key(Role::Server, Role::Client, &hh, &c, &s));
        assert_ne!(k_cs, pair_key(Role::Client, Role::Helper, &hh, &c, &s));
        assert_ne!(k_cs, pair_key(Role::Client, Role::Server, &[2; 32], &c, &s));
        assert_ne!(
            k_cs,
            pair_key(Role::Client, Role::Server, &hh, &c, &hello(Role::Server))
        );
        let kc = session_keys(Role::Client, &[(Role::Server, k_cs)]).unwrap();
        let ks = session_keys(Role::Server, &[(Role::Client, k_cs)]).unwrap();
        assert_eq!(kc.client_server, Some(k_cs));
        assert_eq!(kc.client_server, ks.client_server);
        assert_ne!(kc.private, ks.private);
        assert_ne!(
            kc.private,
            session_keys(Role::Client, &[(Role::Server, k_cs)])
                .unwrap()
                .private
        );
        assert!(kc.server_helper.is_none());
        assert!(session_keys(Role::Client, &[(Role::Client, k_cs)]).is_err());
    }
}
