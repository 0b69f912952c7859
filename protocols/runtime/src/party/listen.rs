//! The listener of server and helper: accepts every connection on a task of its own, gives an
//! unauthenticated one [`PRE_AUTH`] and the hello deadline, holds at most
//! [`MAX_PENDING_PER_ADDRESS`] of them per source address and [`MAX_PENDING`] in all (evicting
//! the oldest), and hands authenticated ones to the session loop through a queue of [`QUEUE`].

use super::link::{recv_hello, timeout_err};
use crate::handshake::Hello;
use knapsec_core::Role;
use knapsec_net::error::{NetError, Result};
use knapsec_net::keys::KeyPair;
use knapsec_net::secure_channel::{PeerKeys, ReplayGuard, SecureChannel};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// How long an unauthenticated connection has for its preamble and first handshake message.
pub const PRE_AUTH: Duration = Duration::from_secs(1);
/// Unauthenticated connections held at a time from one source address; one more evicts the
/// oldest of them (see [`EVICT_AFTER`]).
pub const MAX_PENDING_PER_ADDRESS: usize = 32;
/// Unauthenticated connections held at a time in all; one more evicts the oldest.
pub const MAX_PENDING: usize = 256;
/// How long an unauthenticated connection is safe from eviction by newer ones.
pub const EVICT_AFTER: Duration = Duration::from_millis(250);
/// Authenticated connections waiting for the session loop; more are closed at once.
pub const QUEUE: usize = 4;

/// A connection whose peer authenticated and sent its hello, waiting for the session loop.
pub(super) struct Arrival {
    pub(super) channel: SecureChannel,
    pub(super) hello: Hello,
    pub(super) from: SocketAddr,
    pub(super) at: Instant,
}

/// An unauthenticated connection in progress: id, source address, its task, its start.
type Pending = (u64, IpAddr, AbortHandle, Instant);

/// What the listener's tasks need of the party.
pub(super) struct Gate {
    pub(super) me: Role,
    pub(super) keypair: KeyPair,
    pub(super) peers: PeerKeys,
    pub(super) allowed: Vec<Role>,
    pub(super) max_frame: usize,
    pub(super) hello_wait: Duration,
    pub(super) replay: ReplayGuard,
    /// Unauthenticated connections in progress, oldest first: id, source, task, start.
    pub(super) pending: Mutex<VecDeque<Pending>>,
}

impl Gate {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<Pending>> {
        // A poisoned lock means a panic while editing the list; the list itself is intact.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes room for one more unauthenticated connection from `ip`: beyond a cap (of the
    /// address, or of all) the oldest connection of that address (or of all) is evicted if it
    /// has been waiting for at least [`EVICT_AFTER`]; otherwise the newcomer is refused (false),
    /// so that a churning stranger cannot evict an honest handshake that is still under way.
    fn make_room(&self, ip: IpAddr) -> bool {
        let mut p = self.pending();
        let now = Instant::now();
        if p.iter().filter(|e| e.1 == ip).count() >= MAX_PENDING_PER_ADDRESS {
            match p.iter().position(|e| e.1 == ip) {
                Some(i) if now.duration_since(p[i].3) >= EVICT_AFTER => {
                    if let Some(old) = p.remove(i) {
                        old.2.abort();
                    }
                }
                _ => return false,
            }
        }
        if p.len() >= MAX_PENDING {
            match p.front() {
                Some(e) if now.duration_since(e.3) >= EVICT_AFTER => {
                    if let Some(old) = p.pop_front() {
                        old.2.abort();
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// Authenticates one accepted connection and reads its hello.
    async fn admit(&self, stream: TcpStream) -> Result<(SecureChannel, Hello)> {
        let guess = self.allowed[0];
        let mut channel = tokio::time::timeout(
            PRE_AUTH,
            SecureChannel::respond_guarded(
                self.me,
                stream,
                &self.keypair,
                &self.peers,
                &self.allowed,
                self.max_frame,
                &self.replay,
            ),
        )
        .await
        .map_err(|_| NetError::Handshake {
            peer: guess,
            message: format!(
                "no knapsec handshake within {} s (dropped)",
                PRE_AUTH.as_secs_f64()
            ),
        })??;
        let peer = channel.peer();
        let hello = tokio::time::timeout(self.hello_wait, recv_hello(&mut channel))
            .await
            .map_err(|_| timeout_err(peer, "the hello", self.hello_wait))??;
        Ok((channel, hello))
    }
}

/// Accepts connections on `listener` until `queue` closes: each on its own task
/// ([`Gate::admit`]), the authenticated ones handed to the session loop.
pub(super) async fn listen(listener: TcpListener, gate: Arc<Gate>, queue: mpsc::Sender<Arrival>) {
    let mut next_id = 0u64;
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself is fine.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = queue.closed() => return,
        };
        if !gate.make_room(from.ip()) {
            tracing::debug!(%from, "closed a connection: too many unauthenticated ones");
            drop(stream);
            continue;
        }
        let id = next_id;
        next_id += 1;
        let (g, q) = (Arc::clone(&gate), queue.clone());
        // Holding the list's lock while spawning keeps the task from finishing (and removing
        // its entry) before the entry exists.
        let mut pending = gate.pending();
        let task = tokio::spawn(async move {
            let outcome = g.admit(stream).await;
            g.pending().retain(|e| e.0 != id);
            match outcome {
                Ok((channel, hello)) => {
                    let peer = channel.peer();
                    let arrival = Arrival {
                        channel,
                        hello,
                        from,
                        at: Instant::now(),
                    };
                    if q.try_send(arrival).is_err() {
                        tracing::warn!(%from, "closed a connection of the {peer}: {QUEUE} are already waiting");
                    }
                }
                Err(e @ NetError::Handshake { .. }) => {
                    tracing::warn!(%from, "refused a connection: {e}")
                }
                Err(e) => tracing::info!(%from, "dropped a connection: {e}"),
            }
        });
        pending.push_back((id, from.ip(), task.abort_handle(), Instant::now()));
    }
}
