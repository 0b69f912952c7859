//! The handshake of a secure channel: the plaintext preamble (`KNAPSEC\0 | wire version |
//! initiator role | responder role`), the Noise `KK` builder with the preamble as prologue, the
//! responder's checks of the preamble and its public refusal notices, and the guard against
//! replayed first messages.

use super::WIRE_VERSION;
use super::record::write_record;
use crate::error::{NetError, Result};
use crate::keys::{KeyPair, NOISE_PARAMS, PublicKey};
use knapsec_core::Role;
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub(super) const MAGIC: &[u8; 8] = b"KNAPSEC\0";
pub(super) const PREAMBLE_LEN: usize = 12;

pub(super) fn role_from_byte(b: u8) -> Option<Role> {
    Role::ALL.get(b as usize).copied()
}

pub(super) fn preamble(initiator: Role, responder: Role) -> [u8; PREAMBLE_LEN] {
    let mut p = [0u8; PREAMBLE_LEN];
    p[..8].copy_from_slice(MAGIC);
    p[8..10].copy_from_slice(&WIRE_VERSION.to_le_bytes());
    p[10] = initiator as u8;
    p[11] = responder as u8;
    p
}

pub(super) fn builder<'a>(
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
    pub(super) fn fresh(&self, message: &[u8]) -> bool {
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
pub(super) const REFUSED_AUTH: &str = "authentication failed";
/// Public refusal reason for everything else the initiator can fix from its own config.
pub(super) const REFUSED: &str = "connection refused (the responder's log says why)";

/// Sends a refusal notice (empty record, then the reason) and gives up the connection.
pub(super) async fn refuse(stream: &mut TcpStream, reason: &str) {
    let mut text = reason.as_bytes().to_vec();
    text.truncate(1024);
    let _ = write_record(stream, &[]).await;
    let _ = write_record(stream, &text).await;
    let _ = stream.shutdown().await;
}
