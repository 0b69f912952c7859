//! Mutually authenticated, encrypted channels between two parties over TCP (digest §10.13:
//! the reference speaks plaintext to hard-coded addresses).
//!
//! A connection starts with a 12-byte plaintext preamble, `KNAPSEC\0 | wire version u16 LE |
//! initiator role | responder role`, so that the responder knows whose static key to expect
//! and a version mismatch is reported as such. Then a Noise handshake
//! ([`NOISE_PARAMS`](crate::keys::NOISE_PARAMS), `KK`: both static keys come from the
//! deployment config) authenticates both sides, with the preamble as prologue; a party with
//! the wrong key fails it at connection time. A responder that refuses a connection sends an
//! empty record followed by a short public reason (unauthenticated, for the error message
//! only): `authentication failed`, `unsupported wire version N` (the initiator's own version
//! echoed) or `connection refused`. It never names its role, its own version or the key it
//! expected; the full reason goes to its own log. The reason the initiator receives is peer
//! text, cleaned with [`crate::error::peer_text`] before it is shown.
//!
//! A responder remembers the first handshake messages it accepted recently
//! ([`ReplayGuard`]): one recorded and sent again authenticates (Noise `KK` cannot tell) but its
//! sender cannot finish the handshake, so it is dropped at once instead of holding the
//! connection until a deadline.
//!
//! After the handshake the channel carries records `len: u16 BE | ciphertext` (at most 65 535
//! bytes, the Noise limit) whose plaintexts concatenate into the frame stream of
//! [`crate::frame`]. Nonces are implicit counters per direction, so a dropped, replayed or
//! reordered record fails authentication.
//!
//! The parts: `handshake` (preamble, Noise set-up, refusals, [`ReplayGuard`]), `record` (the
//! records) and `halves` (the two directions of a split channel, [`ChannelReader`] and
//! [`ChannelWriter`]).

mod halves;
mod handshake;
mod record;

pub use halves::{ChannelReader, ChannelWriter, LastHeard};
pub use handshake::{REPLAY_MEMORY, ReplayGuard};

use crate::error::{NetError, Result, peer_text};
use crate::frame::{self, Frame, FrameDecoder, FrameKind};
use crate::keys::{KeyPair, PublicKey};
use handshake::{
    MAGIC, PREAMBLE_LEN, REFUSED, REFUSED_AUTH, builder, preamble, refuse, role_from_byte,
};
use knapsec_core::Role;
use record::{
    MAX_PLAIN, MAX_RECORD, WRITE_BATCH, open_record, read_record, seal_records, write_record,
};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Version of the connection format (preamble, records, frames); 2 added keep-alive frames.
pub const WIRE_VERSION: u16 = 2;

/// The public keys of the three parties, as the deployment config lists them.
#[derive(Clone, Debug, Default)]
pub struct PeerKeys {
    /// Indexed by role (client, server, helper); `None` where the config lists none.
    pub keys: [Option<PublicKey>; 3],
}

impl PeerKeys {
    /// The key of `role`, if configured.
    pub fn get(&self, role: Role) -> Option<&PublicKey> {
        self.keys[role.index()].as_ref()
    }
}

/// A channel after its handshake, before it is split into reader and writer halves.
pub struct SecureChannel {
    peer: Role,
    stream: TcpStream,
    noise: Arc<snow::StatelessTransportState>,
    handshake_hash: [u8; 32],
    send_nonce: u64,
    recv_nonce: u64,
    decoder: FrameDecoder,
    pending: std::collections::VecDeque<Frame>,
    max_frame: usize,
}

impl std::fmt::Debug for SecureChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_peer(f, "SecureChannel", self.peer)
    }
}

impl SecureChannel {
    /// Runs the initiator side over a connected `stream`: `me` proves its identity with
    /// `local`, and accepts only a `peer` holding the private half of `remote`.
    ///
    /// # Errors
    /// [`NetError::Refused`] if the peer refuses (e.g. it does not know our key),
    /// [`NetError::Handshake`] if the peer's key is not `remote`, I/O errors.
    pub async fn initiate(
        me: Role,
        peer: Role,
        mut stream: TcpStream,
        local: &KeyPair,
        remote: &PublicKey,
        max_frame: usize,
    ) -> Result<Self> {
        let io = io_error(peer);
        let pre = preamble(me, peer);
        stream.write_all(&pre).await.map_err(io)?;
        let mut hs = builder(local, remote, &pre)?
            .build_initiator()
            .map_err(|e| NetError::Invalid(e.to_string()))?;
        let mut msg = vec![0u8; MAX_RECORD];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|e| NetError::Handshake {
                peer,
                message: e.to_string(),
            })?;
        write_record(&mut stream, &msg[..n]).await.map_err(io)?;
        let mut rec = Vec::new();
        read_record(&mut stream, &mut rec)
            .await
            .map_err(|e| closed_during_handshake(peer, e))?;
        if rec.is_empty() {
            let mut reason = Vec::new();
            read_record(&mut stream, &mut reason)
                .await
                .map_err(|e| closed_during_handshake(peer, e))?;
            return Err(NetError::Refused {
                peer,
                reason: format!(
                    "{} (check the addresses, roles and public keys of the deployment config; \
                     the {peer}'s log names the cause)",
                    peer_text(&reason)
                ),
            });
        }
        let mut payload = vec![0u8; MAX_RECORD];
        hs.read_message(&rec, &mut payload).map_err(|_| NetError::Handshake {
            peer,
            message: format!(
                "its answer does not authenticate with the {peer} public key {} of the deployment config \
                 (wrong key file, or another process answers at that address)",
                remote.fingerprint()
            ),
        })?;
        Self::finish(peer, stream, hs, max_frame)
    }

    /// Runs the responder side over an accepted `stream`: reads the preamble, checks that the
    /// initiator is one of `allowed`, and authenticates it with the key `keys` lists for it.
    ///
    /// # Errors
    /// [`NetError::Handshake`] (also sent to the initiator as a refusal) for a wrong version,
    /// role or key; I/O errors.
    pub async fn respond(
        me: Role,
        stream: TcpStream,
        local: &KeyPair,
        keys: &PeerKeys,
        allowed: &[Role],
        max_frame: usize,
    ) -> Result<Self> {
        Self::respond_guarded(
            me,
            stream,
            local,
            keys,
            allowed,
            max_frame,
            &ReplayGuard::new(),
        )
        .await
    }

    /// [`SecureChannel::respond`], dropping a first handshake message that `replay` has seen
    /// before (a listener passes the same guard for all its connections).
    ///
    /// # Errors
    /// As [`SecureChannel::respond`]; [`NetError::Handshake`] (without a refusal sent) for a
    /// replayed first message.
    pub async fn respond_guarded(
        me: Role,
        mut stream: TcpStream,
        local: &KeyPair,
        keys: &PeerKeys,
        allowed: &[Role],
        max_frame: usize,
        replay: &ReplayGuard,
    ) -> Result<Self> {
        let mut pre = [0u8; PREAMBLE_LEN];
        // Until the preamble names it, report the peer as the first allowed role.
        let guess = allowed.first().copied().unwrap_or(Role::Client);
        stream
            .read_exact(&mut pre)
            .await
            .map_err(|e| closed_during_handshake(guess, e))?;
        if &pre[..8] != MAGIC {
            return Err(NetError::Handshake {
                peer: guess,
                message:
                    "the connection does not start with the knapsec preamble (not a knapsec party)"
                        .into(),
            });
        }
        let version = u16::from_le_bytes([pre[8], pre[9]]);
        let (Some(initiator), Some(responder)) = (role_from_byte(pre[10]), role_from_byte(pre[11]))
        else {
            return Err(NetError::Handshake {
                peer: guess,
                message: "the preamble names an unknown role".into(),
            });
        };
        // (local reason for the log, public reason for the peer)
        let reason = if version != WIRE_VERSION {
            Some((
                format!(
                    "the {initiator} speaks wire version {version}, the {me} speaks {WIRE_VERSION}"
                ),
                format!("unsupported wire version {version}"),
            ))
        } else if responder != me {
            Some((
                format!("the {initiator} wants the {responder}, but this address serves the {me}"),
                REFUSED.to_string(),
            ))
        } else if !allowed.contains(&initiator) {
            Some((
                format!("the {me} does not accept connections from the {initiator} here"),
                REFUSED.to_string(),
            ))
        } else if keys.get(initiator).is_none() {
            Some((
                format!("the {me} has no public key for the {initiator}"),
                REFUSED.to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, public)) = reason {
            refuse(&mut stream, &public).await;
            return Err(NetError::Handshake {
                peer: initiator,
                message: reason,
            });
        }
        let remote = *keys.get(initiator).expect("checked above");
        let mut hs = builder(local, &remote, &pre)?
            .build_responder()
            .map_err(|e| NetError::Invalid(e.to_string()))?;
        let mut rec = Vec::new();
        read_record(&mut stream, &mut rec)
            .await
            .map_err(|e| closed_during_handshake(initiator, e))?;
        let mut payload = vec![0u8; MAX_RECORD];
        if hs.read_message(&rec, &mut payload).is_err() {
            let reason = format!(
                "authentication failed: the {initiator}'s static key is not the key {} this {me} was configured with, \
                 or the {initiator} does not hold this {me}'s public key",
                remote.fingerprint()
            );
            refuse(&mut stream, REFUSED_AUTH).await;
            return Err(NetError::Handshake {
                peer: initiator,
                message: reason,
            });
        }
        if !replay.fresh(&rec) {
            // No answer: whoever replays it learns nothing, not even that it was noticed.
            return Err(NetError::Handshake {
                peer: initiator,
                message: "a replayed first handshake message (dropped)".into(),
            });
        }
        let mut msg = vec![0u8; MAX_RECORD];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|e| NetError::Handshake {
                peer: initiator,
                message: e.to_string(),
            })?;
        write_record(&mut stream, &msg[..n])
            .await
            .map_err(io_error(initiator))?;
        Self::finish(initiator, stream, hs, max_frame)
    }

    fn finish(
        peer: Role,
        stream: TcpStream,
        hs: snow::HandshakeState,
        max_frame: usize,
    ) -> Result<Self> {
        let mut handshake_hash = [0u8; 32];
        handshake_hash.copy_from_slice(&hs.get_handshake_hash()[..32]);
        let noise = hs
            .into_stateless_transport_mode()
            .map_err(|e| NetError::Handshake {
                peer,
                message: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        Ok(SecureChannel {
            peer,
            stream,
            noise: Arc::new(noise),
            handshake_hash,
            send_nonce: 0,
            recv_nonce: 0,
            decoder: FrameDecoder::new(max_frame),
            pending: Default::default(),
            max_frame,
        })
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Role {
        self.peer
    }

    /// The Noise handshake hash: unique per connection and known to both ends, but public
    /// (it is a hash of the transcript); mix it with secrets before using it as a key.
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.handshake_hash
    }

    /// Sends one frame and flushes.
    ///
    /// # Errors
    /// If the frame is too large or the socket fails.
    pub async fn send_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        let mut plain = Vec::new();
        frame::encode_frame(kind, payload, self.max_frame, &mut plain)?;
        let mut out = Vec::new();
        seal_records(
            &self.noise,
            &mut self.send_nonce,
            &plain,
            &mut out,
            self.peer,
        )?;
        self.stream
            .write_all(&out)
            .await
            .map_err(io_error(self.peer))
    }

    /// Receives the next frame.
    ///
    /// # Errors
    /// If the peer closes the connection, a record fails authentication, or a frame is invalid.
    pub async fn recv_frame(&mut self) -> Result<Frame> {
        let mut rec = Vec::new();
        let mut plain = vec![0u8; MAX_RECORD];
        loop {
            if let Some(f) = self.pending.pop_front() {
                // A peer whose session transport already runs may send keep-alives before
                // this side has split its channel: they say nothing here.
                if f.kind == FrameKind::Alive {
                    continue;
                }
                return Ok(f);
            }
            read_record(&mut self.stream, &mut rec)
                .await
                .map_err(|e| closed_during_handshake(self.peer, e))?;
            let n = open_record(
                &self.noise,
                &mut self.recv_nonce,
                &rec,
                &mut plain,
                self.peer,
            )?;
            let pending = &mut self.pending;
            self.decoder.feed(&plain[..n], |f| pending.push_back(f))?;
        }
    }

    /// Splits the channel into its two directions, for concurrent reading and writing.
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        let (r, w) = self.stream.into_split();
        let reader = ChannelReader {
            peer: self.peer,
            inner: BufReader::with_capacity(WRITE_BATCH, r),
            noise: self.noise.clone(),
            nonce: self.recv_nonce,
            decoder: self.decoder,
            pending: self.pending,
            rec: Vec::new(),
            plain: vec![0u8; MAX_RECORD],
            heard: None,
        };
        let writer = ChannelWriter {
            peer: self.peer,
            inner: w,
            noise: self.noise,
            nonce: self.send_nonce,
            plain: Vec::with_capacity(MAX_PLAIN),
            out: Vec::with_capacity(WRITE_BATCH + MAX_RECORD + 2),
            max_frame: self.max_frame,
        };
        (reader, writer)
    }
}

fn closed_during_handshake(peer: Role, e: std::io::Error) -> NetError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        NetError::Io {
            peer,
            source: std::io::Error::new(e.kind(), "the connection was closed"),
        }
    } else {
        NetError::Io { peer, source: e }
    }
}

/// Wraps a socket error on the connection to `peer`.
fn io_error(peer: Role) -> impl Fn(std::io::Error) -> NetError + Copy {
    move |source| NetError::Io { peer, source }
}

/// `Debug` of a channel part: its name and peer.
fn debug_peer(f: &mut std::fmt::Formatter<'_>, name: &str, peer: Role) -> std::fmt::Result {
    f.debug_struct(name)
        .field("peer", &peer)
        .finish_non_exhaustive()
}
