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

use crate::error::{NetError, Result, peer_text};
use crate::frame::{self, Frame, FrameDecoder, FrameKind};
use crate::keys::{KeyPair, NOISE_PARAMS, PublicKey};
use knapsec_core::Role;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Version of the connection format (preamble, records, frames); 2 added keep-alive frames.
pub const WIRE_VERSION: u16 = 2;
const MAGIC: &[u8; 8] = b"KNAPSEC\0";
const PREAMBLE_LEN: usize = 12;
const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext bytes per record.
const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Encrypted bytes buffered before a write.
const WRITE_BATCH: usize = 256 * 1024;

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

fn role_from_byte(b: u8) -> Option<Role> {
    Role::ALL.get(b as usize).copied()
}

fn preamble(initiator: Role, responder: Role) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..10].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    p[10] = initiator as u8;
    p[11] = responder as u8;
    p
}

fn builder<'a>(
    local: &'a KeyPair,
    remote: &'a PublicKey,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(|e| NetError::Invalid(format!("noise parameters: {e}")))?;
    let noise = |e: snow::Error| NetError::Invalid(format!("noise setup: {e}"));
    snow::Builder::new(params)
        .local_private_key(&local.private)
        .map_err(noise)?
        .remote_public_key(&remote.0)
        .map_err(noise)?
        .prologue(prologue)
        .map_err(noise)
}

async fn write_record<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    buf.extend_from_slice(bytes);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one record into `buf` (resized to its length).
async fn read_record<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    buf.resize(u16::from_be_bytes(len) as usize, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// First handshake messages a responder remembers, to drop replays ([`ReplayGuard`]).
pub const REPLAY_MEMORY: usize = 16_384;

/// The first handshake messages a responder accepted recently (their BLAKE3 hashes, at most
/// [`REPLAY_MEMORY`], oldest forgotten first: 1 MiB at most). Every honest first message
/// carries a fresh ephemeral key, so a repeat is a replay.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<Remembered>,
}

/// Hashes remembered by a [`ReplayGuard`], as a set and in arrival order.
type Remembered = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `message`; false if it was seen before.
    fn fresh(&self, message: &[u8]) -> bool {
        let h = *blake3::hash(message).as_bytes();
        // A poisoned lock only means a panic elsewhere while inserting: the sets are valid.
        let mut g = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (set, order) = &mut *g;
        if !set.insert(h) {
            return false;
        }
        order.push_back(h);
        if order.len() > REPLAY_MEMORY
            && let Some(old) = order.pop_front()
        {
            set.remove(&old);
        }
        true
    }
}

/// Public refusal reason: the initiator's key (or ours at its end) does not authenticate.
const REFUSED_AUTH: &str = "authentication failed";
/// Public refusal reason for everything else the initiator can fix from its own config.
const REFUSED: &str = "connection refused (the responder's log says why)";

/// Sends a refusal notice (empty record, then the reason) and gives up the connection.
async fn refuse(stream: &mut TcpStream, reason: &str) {
    let mut text = reason.as_bytes().to_vec();
    text.truncate(1024);
    let _ = write_record(stream, &[]).await;
    let _ = write_record(stream, &text).await;
    let _ = stream.shutdown().await;
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
        f.debug_struct("SecureChannel")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
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
        let io = |source| NetError::Io { peer, source };
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
            .map_err(|source| NetError::Io {
                peer: initiator,
                source,
            })?;
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
            .map_err(|source| NetError::Io {
                peer: self.peer,
                source,
            })
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

/// Encrypts `plain` as records appended to `out`.
fn seal_records(
    noise: &snow::StatelessTransportState,
    nonce: &mut u64,
    plain: &[u8],
    out: &mut Vec<u8>,
    peer: Role,
) -> Result<()> {
    for chunk in plain.chunks(MAX_PLAIN) {
        let start = out.len();
        out.resize(start + 2 + chunk.len() + TAG_LEN, 0);
        let n = noise
            .write_message(*nonce, chunk, &mut out[start + 2..])
            .map_err(|e| NetError::Handshake {
                peer,
                message: format!("encryption failed: {e}"),
            })?;
        *nonce += 1;
        out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(start + 2 + n);
    }
    Ok(())
}

/// Decrypts one record into `plain`; returns the plaintext length.
fn open_record(
    noise: &snow::StatelessTransportState,
    nonce: &mut u64,
    rec: &[u8],
    plain: &mut [u8],
    peer: Role,
) -> Result<usize> {
    let n = noise.read_message(*nonce, rec, plain).map_err(|_| {
        NetError::MalformedFrame(format!(
            "a record from the {peer} failed authentication (corrupted or forged data)"
        ))
    })?;
    *nonce += 1;
    Ok(n)
}

/// The receiving half of a [`SecureChannel`].
pub struct ChannelReader {
    peer: Role,
    inner: BufReader<OwnedReadHalf>,
    noise: Arc<snow::StatelessTransportState>,
    nonce: u64,
    decoder: FrameDecoder,
    pending: std::collections::VecDeque<Frame>,
    rec: Vec<u8>,
    plain: Vec<u8>,
    heard: Option<Arc<LastHeard>>,
}

/// When a connection last delivered a record (any bytes at all) from its peer: the liveness
/// of the peer and the link, shared between a reader and whoever waits on it.
#[derive(Debug)]
pub struct LastHeard {
    epoch: std::time::Instant,
    millis: std::sync::atomic::AtomicU64,
}

impl LastHeard {
    /// Starts as heard now.
    pub fn now() -> Self {
        LastHeard {
            epoch: std::time::Instant::now(),
            millis: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Notes that the peer was heard now.
    pub fn mark(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.millis
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the peer was last heard.
    pub fn at(&self) -> std::time::Instant {
        self.epoch
            + std::time::Duration::from_millis(
                self.millis.load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReader")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ChannelReader {
    /// Marks `heard` whenever a record arrives (also in the middle of a long frame).
    pub fn watch(&mut self, heard: Arc<LastHeard>) {
        self.heard = Some(heard);
    }

    /// The next frame, or `None` when the peer closed the connection between frames.
    ///
    /// # Errors
    /// A socket error, a record failing authentication, an invalid frame, or a connection
    /// closed in the middle of a frame.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            let mut len = [0u8; 2];
            match self.inner.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && self.decoder.is_idle() =>
                {
                    return Ok(None);
                }
                Err(source) => {
                    return Err(NetError::Io {
                        peer: self.peer,
                        source,
                    });
                }
            }
            self.rec.resize(u16::from_be_bytes(len) as usize, 0);
            self.inner
                .read_exact(&mut self.rec)
                .await
                .map_err(|source| NetError::Io {
                    peer: self.peer,
                    source,
                })?;
            let n = open_record(
                &self.noise,
                &mut self.nonce,
                &self.rec,
                &mut self.plain,
                self.peer,
            )?;
            if let Some(h) = &self.heard {
                h.mark();
            }
            let pending = &mut self.pending;
            self.decoder
                .feed(&self.plain[..n], |f| pending.push_back(f))?;
        }
    }
}

/// The sending half of a [`SecureChannel`]. Frames are coalesced into records and written
/// in batches; [`ChannelWriter::flush`] pushes everything out.
pub struct ChannelWriter {
    peer: Role,
    inner: OwnedWriteHalf,
    noise: Arc<snow::StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    out: Vec<u8>,
    max_frame: usize,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelWriter")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl ChannelWriter {
    /// Queues one frame; writes to the socket whenever a batch is full.
    ///
    /// # Errors
    /// If the frame exceeds the maximum or the socket fails.
    pub async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max_frame || payload.len() > u32::MAX as usize {
            return Err(NetError::FrameTooLarge {
                size: payload.len(),
                max: self.max_frame,
            });
        }
        self.push(&frame::frame_header(kind, payload.len())).await?;
        self.push(payload).await
    }

    async fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let take = (MAX_PLAIN - self.plain.len()).min(bytes.len());
            self.plain.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.plain.len() == MAX_PLAIN {
                self.seal()?;
                if self.out.len() >= WRITE_BATCH {
                    self.write_out().await?;
                }
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if !self.plain.is_empty() {
            seal_records(
                &self.noise,
                &mut self.nonce,
                &self.plain,
                &mut self.out,
                self.peer,
            )?;
            self.plain.clear();
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<()> {
        self.inner
            .write_all(&self.out)
            .await
            .map_err(|source| NetError::Io {
                peer: self.peer,
                source,
            })?;
        self.out.clear();
        Ok(())
    }

    /// Seals the partial record and writes everything buffered.
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn flush(&mut self) -> Result<()> {
        self.seal()?;
        self.write_out().await
    }

    /// Flushes and closes the sending direction (the peer reads end-of-stream).
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.flush().await?;
        self.inner.shutdown().await.map_err(|source| NetError::Io {
            peer: self.peer,
            source,
        })
    }
}
