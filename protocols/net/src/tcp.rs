//! The TCP [`Transport`]: one authenticated connection per pair of parties (DESIGN §5,
//! digest §6.15 done better).
//!
//! Design: the protocol code is synchronous (a backend's `run` calls `send`/`recv`), the
//! sockets are driven by tokio. Each connection gets a writer task and a reader task on a
//! tokio runtime that the party owns (see [`crate::party`]). `send` hands the message to the
//! writer task through an unbounded channel and returns at once: messages are pipelined,
//! never acknowledged one by one, and coalesced into records and socket writes. The reader
//! task decrypts and decodes frames into a `std::sync::mpsc` queue per peer, from which
//! `recv` takes with the configured receive timeout.
//!
//! Memory is bounded: a frame is at most `max_frame` bytes (checked on its header, before
//! anything is allocated), and a reader stops reading its socket while more than
//! `2 · max_frame` payload bytes wait in its queue (TCP flow control then holds the peer), so
//! a peer that sends faster than this party consumes makes it hold at most about
//! `3 · max_frame` bytes per connection. Senders never wait (their queue holds only their own
//! data), so this cannot deadlock the protocol.
//!
//! Silence means death: every connection's writer sends a keep-alive frame when it has had
//! nothing to send for a while (a quarter of the receive timeout, at most 1 s), and every
//! record that arrives marks its peer as heard. `recv` gives up on a peer only when nothing at
//! all came from it for the receive timeout, so a party that waits for a peer busy with a long
//! layer, or blocked on the third party, keeps waiting (up to four receive timeouts, so that a
//! peer that is alive but never sends cannot hold a party forever), and the error names the
//! party (or link) that actually went quiet. A cut link is therefore reported by the parties at its
//! ends, and the others learn it from their aborts.
//!
//! Faults travel fast: when a peer's connection drops without its goodbye frame, or a peer
//! aborts, or sends a malformed or oversized frame, the reader task posts the failure to
//! *both* peer queues, so a party blocked on the other peer learns of it at once instead of
//! at its timeout. Every error names the peer and the scope (layer, op) last set with
//! [`Transport::set_scope`].

use crate::error::{NetError, Result};
use crate::frame::FrameKind;
use crate::secure_channel::{ChannelReader, ChannelWriter, LastHeard, SecureChannel};
use knapsec_core::Role;
use knapsec_core::transport::{Transport, TransportError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::mpsc as tmpsc;
use tokio::task::JoinHandle;

enum Outbound {
    Data(Vec<u8>),
    Abort(String),
    Goodbye,
}

enum Inbound {
    Data(Vec<u8>),
    /// The peer closed its side cleanly.
    Goodbye(Role),
    /// The peer aborted with a reason.
    Aborted(Role, String),
    /// The connection with the peer failed.
    Failed(Role, String),
}

struct Link {
    peer: Role,
    tx: tmpsc::UnboundedSender<Outbound>,
    rx: mpsc::Receiver<Inbound>,
    writer: JoinHandle<Result<()>>,
    reader: JoinHandle<()>,
    bytes_sent: u64,
    /// When anything last arrived from the peer.
    heard: Arc<LastHeard>,
    /// Payload bytes waiting in `rx`.
    queued: Arc<AtomicUsize>,
}

/// How many receive timeouts a party waits for a message from a peer that keeps sending
/// keep-alives but no data (a peer blocked on the third party, or one that misbehaves).
const ALIVE_BUT_SILENT_LIMIT: u32 = 4;

/// How long a connection's writer stays idle before it sends a keep-alive.
fn keep_alive_interval(recv_timeout: Duration) -> Duration {
    (recv_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Byte counts of one transport, per peer (payload bytes of data frames).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Payload bytes sent to the peer.
    pub sent: u64,
    /// Payload bytes received from the peer.
    pub received: u64,
}

/// A [`Transport`] over two authenticated TCP connections.
pub struct TcpTransport {
    role: Role,
    links: Vec<Link>,
    recv_timeout: Duration,
    max_frame: usize,
    scope: String,
    handle: Handle,
    fault: Option<(Role, String)>,
    bytes_received: [u64; 3],
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("role", &self.role)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl TcpTransport {
    /// Wraps the two channels of `role` (one per other role) and starts their tasks on
    /// `handle`'s runtime.
    ///
    /// # Errors
    /// If the channels are not exactly one per other role.
    pub fn new(
        role: Role,
        channels: Vec<SecureChannel>,
        handle: Handle,
        recv_timeout: Duration,
        max_frame: usize,
    ) -> Result<Self> {
        let mut peers: Vec<Role> = channels.iter().map(|c| c.peer()).collect();
        peers.sort();
        if peers != role.others() {
            return Err(NetError::Invalid(format!(
                "the {role} needs one channel to each other party, got {peers:?}"
            )));
        }
        let (in_tx, in_rx): (Vec<_>, Vec<_>) =
            channels.iter().map(|_| mpsc::channel::<Inbound>()).unzip();
        let mut links = Vec::new();
        for ((i, ch), rx) in channels.into_iter().enumerate().zip(in_rx) {
            let peer = ch.peer();
            let (mut reader, writer) = ch.split();
            let heard = Arc::new(LastHeard::now());
            reader.watch(Arc::clone(&heard));
            let (tx, out_rx) = tmpsc::unbounded_channel();
            let own = in_tx[i].clone();
            let other = in_tx[1 - i].clone();
            let queued = Arc::new(AtomicUsize::new(0));
            let budget = Budget {
                queued: Arc::clone(&queued),
                limit: max_frame.saturating_mul(2),
            };
            let reader = handle.spawn(read_loop(peer, reader, own, other, budget));
            let writer = handle.spawn(write_loop(
                writer,
                out_rx,
                keep_alive_interval(recv_timeout),
            ));
            links.push(Link {
                peer,
                tx,
                rx,
                writer,
                reader,
                bytes_sent: 0,
                heard,
                queued,
            });
        }
        Ok(TcpTransport {
            role,
            links,
            recv_timeout,
            max_frame,
            scope: String::new(),
            handle,
            fault: None,
            bytes_received: [0; 3],
        })
    }

    fn link(&mut self, peer: Role) -> std::result::Result<&mut Link, TransportError> {
        let me = self.role;
        self.links
            .iter_mut()
            .find(|l| l.peer == peer)
            .ok_or(TransportError::SelfMessage { peer: me })
    }

    fn context(&self) -> String {
        if self.scope.is_empty() {
            String::new()
        } else {
            format!(" at {}", self.scope)
        }
    }

    fn fault_error(&self, culprit: Role, what: &str, waiting_for: Option<Role>) -> TransportError {
        let waiting = match waiting_for {
            Some(p) if p != culprit => format!(" while the {} waited for the {p}", self.role),
            _ => String::new(),
        };
        TransportError::Disconnected {
            peer: culprit,
            context: format!(" ({what}){}{waiting}", self.context()),
        }
    }

    /// Payload bytes sent to and received from `peer` so far.
    pub fn stats(&self, peer: Role) -> LinkStats {
        LinkStats {
            sent: self
                .links
                .iter()
                .find(|l| l.peer == peer)
                .map_or(0, |l| l.bytes_sent),
            received: self.bytes_received[peer.index()],
        }
    }

    /// Ends the session cleanly: sends a goodbye on both connections, flushes, and waits
    /// (at most `linger`) for the peers to close their sides, so that no data in flight is lost.
    pub fn close(self, linger: Duration) {
        self.finish(Outbound::Goodbye, linger);
    }

    /// Aborts the session: sends `reason` to both peers (they stop with an error that
    /// quotes it), then closes like [`TcpTransport::close`].
    pub fn abort(self, reason: &str, linger: Duration) {
        self.finish(Outbound::Abort(reason.to_string()), linger);
    }

    fn finish(mut self, last: Outbound, linger: Duration) {
        let mut tasks = Vec::new();
        for link in std::mem::take(&mut self.links) {
            let msg = match &last {
                Outbound::Goodbye => Outbound::Goodbye,
                Outbound::Abort(r) => Outbound::Abort(r.clone()),
                Outbound::Data(_) => unreachable!("finish sends a goodbye or an abort"),
            };
            let _ = link.tx.send(msg);
            drop(link.tx);
            // A peer silent for a whole receive timeout (a dead party or a cut link) would only
            // make this party wait out the linger: its last frame is sent, not waited for.
            if link.heard.at() + self.recv_timeout <= Instant::now() {
                link.writer.abort();
                link.reader.abort();
                continue;
            }
            // The queue stays open until the end, so that the reader keeps draining the
            // socket until the peer's end-of-stream.
            tasks.push((link.writer, link.reader, link.rx));
        }
        self.handle.block_on(async move {
            let _ = tokio::time::timeout(linger, async {
                for (writer, reader, _) in &mut tasks {
                    let _ = writer.await;
                    let _ = reader.await;
                }
            })
            .await;
            for (writer, reader, _) in tasks {
                writer.abort();
                reader.abort();
            }
        });
    }
}

impl Drop for TcpTransport {
    /// Dropped without [`TcpTransport::close`] (e.g. on a panic): the connections go down
    /// without a goodbye, which the peers report as this party's failure.
    fn drop(&mut self) {
        for link in self.links.drain(..) {
            link.writer.abort();
            link.reader.abort();
        }
    }
}

async fn write_loop(
    mut w: ChannelWriter,
    mut rx: tmpsc::UnboundedReceiver<Outbound>,
    keep_alive: Duration,
) -> Result<()> {
    loop {
        let msg = match tokio::time::timeout(keep_alive, rx.recv()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                w.write_frame(FrameKind::Alive, &[]).await?;
                w.flush().await?;
                continue;
            }
        };
        let mut next = Some(msg);
        // Coalesce everything already queued into as few socket writes as possible.
        while let Some(msg) = next {
            match msg {
                Outbound::Data(v) => w.write_frame(FrameKind::Data, &v).await?,
                Outbound::Abort(reason) => {
                    w.write_frame(FrameKind::Abort, reason.as_bytes()).await?;
                    return w.shutdown().await;
                }
                Outbound::Goodbye => {
                    w.write_frame(FrameKind::Goodbye, &[]).await?;
                    return w.shutdown().await;
                }
            }
            next = rx.try_recv().ok();
        }
        w.flush().await?;
    }
    // Dropped without goodbye (the party is going down): close without one, so the peers
    // see a failure, not a clean end.
    Ok(())
}

/// The bound on a reader's queue: payload bytes waiting, and how many may wait.
struct Budget {
    queued: Arc<AtomicUsize>,
    limit: usize,
}

impl Budget {
    /// Waits until `len` more bytes fit (always at once when the queue is empty), then
    /// counts them.
    async fn reserve(&self, len: usize) {
        loop {
            let q = self.queued.load(Ordering::Acquire);
            if q == 0 || q.saturating_add(len) <= self.limit {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.queued.fetch_add(len, Ordering::AcqRel);
    }
}

async fn read_loop(
    peer: Role,
    mut r: ChannelReader,
    own: mpsc::Sender<Inbound>,
    other: mpsc::Sender<Inbound>,
    budget: Budget,
) {
    let mut said_goodbye = false;
    loop {
        match r.next_frame().await {
            Ok(Some(f)) => match f.kind {
                // Its record already marked the peer as heard.
                FrameKind::Alive => {}
                FrameKind::Data if !said_goodbye => {
                    budget.reserve(f.payload.len()).await;
                    if own.send(Inbound::Data(f.payload)).is_err() {
                        return;
                    }
                }
                FrameKind::Data | FrameKind::Goodbye if said_goodbye => {
                    let why = "sent data after its goodbye".to_string();
                    let _ = own.send(Inbound::Failed(peer, why.clone()));
                    let _ = other.send(Inbound::Failed(peer, why));
                    return;
                }
                FrameKind::Goodbye => {
                    said_goodbye = true;
                    let _ = own.send(Inbound::Goodbye(peer));
                }
                FrameKind::Abort | FrameKind::Data => {
                    let reason = crate::error::peer_text(&f.payload);
                    let _ = own.send(Inbound::Aborted(peer, reason.clone()));
                    let _ = other.send(Inbound::Aborted(peer, reason));
                    return;
                }
            },
            Ok(None) => {
                if !said_goodbye {
                    let why =
                        "the connection closed without a goodbye: the party stopped or crashed"
                            .to_string();
                    let _ = own.send(Inbound::Failed(peer, why.clone()));
                    let _ = other.send(Inbound::Failed(peer, why));
                }
                return;
            }
            Err(e) => {
                if said_goodbye {
                    return;
                }
                let why = match e {
                    NetError::Io { source, .. } => format!("connection error: {source}"),
                    other => other.to_string(),
                };
                let _ = own.send(Inbound::Failed(peer, why.clone()));
                let _ = other.send(Inbound::Failed(peer, why));
                return;
            }
        }
    }
}

impl TcpTransport {
    /// Receives the next message from `from`, waiting at most `wait` however lively the peer
    /// is: for a party that may legitimately stay idle (a client between two inferences),
    /// whose keep-alives must not extend the wait without end.
    ///
    /// # Errors
    /// As [`Transport::recv`]; [`TransportError::Timeout`] after `wait`.
    pub fn recv_within(
        &mut self,
        from: Role,
        wait: Duration,
    ) -> std::result::Result<Vec<u8>, TransportError> {
        if let Some((culprit, what)) = self.fault.clone() {
            return Err(self.fault_error(culprit, &what, Some(from)));
        }
        let got = self.link(from)?.rx.recv_timeout(wait);
        match got {
            Err(mpsc::RecvTimeoutError::Timeout) => Err(TransportError::Timeout {
                peer: from,
                context: format!(" (idle for {} s){}", wait.as_secs_f64(), self.context()),
            }),
            other => self.received(from, other),
        }
    }

    /// Turns what the queue of `from` gave into a message or the error it means.
    fn received(
        &mut self,
        from: Role,
        got: std::result::Result<Inbound, mpsc::RecvTimeoutError>,
    ) -> std::result::Result<Vec<u8>, TransportError> {
        match got {
            Ok(Inbound::Data(v)) => {
                self.bytes_received[from.index()] += v.len() as u64;
                if let Some(l) = self.links.iter().find(|l| l.peer == from) {
                    l.queued.fetch_sub(v.len(), Ordering::AcqRel);
                }
                Ok(v)
            }
            Ok(Inbound::Goodbye(p)) => {
                let what = "it closed the session";
                self.fault = Some((p, what.into()));
                Err(self.fault_error(p, what, Some(from)))
            }
            Ok(Inbound::Aborted(p, reason)) => {
                self.fault = Some((p, format!("it aborted: {reason}")));
                Err(TransportError::Io {
                    peer: p,
                    message: format!("aborted the session{}: {reason}", self.context()),
                })
            }
            Ok(Inbound::Failed(p, what)) => {
                self.fault = Some((p, what.clone()));
                Err(self.fault_error(p, &what, Some(from)))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(TransportError::Timeout {
                peer: from,
                context: self.context(),
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let what = "its connection is gone";
                Err(self.fault_error(from, what, Some(from)))
            }
        }
    }
}

impl Transport for TcpTransport {
    fn role(&self) -> Role {
        self.role
    }

    fn send(&mut self, to: Role, msg: Vec<u8>) -> std::result::Result<(), TransportError> {
        if msg.len() > self.max_frame {
            return Err(TransportError::FrameTooLarge {
                peer: to,
                size: msg.len(),
                max: self.max_frame,
            });
        }
        if let Some((culprit, what)) = self.fault.clone() {
            return Err(self.fault_error(culprit, &what, None));
        }
        let len = msg.len() as u64;
        let context = self.context();
        let link = self.link(to)?;
        if link.tx.send(Outbound::Data(msg)).is_err() {
            return Err(TransportError::Disconnected {
                peer: to,
                context: format!(" (the connection is closed){context}"),
            });
        }
        link.bytes_sent += len;
        Ok(())
    }

    fn recv(&mut self, from: Role) -> std::result::Result<Vec<u8>, TransportError> {
        if let Some((culprit, what)) = self.fault.clone() {
            return Err(self.fault_error(culprit, &what, Some(from)));
        }
        let timeout = self.recv_timeout;
        let start = Instant::now();
        let link = self.link(from)?;
        // Wait until a message comes, or until nothing at all (not even a keep-alive) has come
        // from the peer for `timeout`.
        // A peer that stays connected but sends no data is given up after
        // `ALIVE_BUT_SILENT_LIMIT` receive timeouts, so that no wait is unbounded.
        let give_up = start + timeout * ALIVE_BUT_SILENT_LIMIT;
        let deadline = || (link.heard.at().max(start) + timeout).min(give_up);
        let got = loop {
            let left = deadline().saturating_duration_since(Instant::now());
            match link.rx.recv_timeout(left) {
                Err(mpsc::RecvTimeoutError::Timeout) if deadline() > Instant::now() => continue,
                other => break other,
            }
        };
        match got {
            Err(mpsc::RecvTimeoutError::Timeout) => Err(TransportError::Timeout {
                peer: from,
                context: if link.heard.at() + timeout > Instant::now() {
                    format!(
                        " (alive, but no message for {:.1} s){}",
                        start.elapsed().as_secs_f64(),
                        self.context()
                    )
                } else {
                    format!(
                        " ({} s without a sign of life){}",
                        timeout.as_secs_f64(),
                        self.context()
                    )
                },
            }),
            other => self.received(from, other),
        }
    }

    fn set_scope(&mut self, layer: &str, op: &str) {
        self.scope = if op.is_empty() {
            format!("layer {layer}")
        } else {
            format!("layer {layer} ({op})")
        };
    }
}

/// Lets a decorator such as [`crate::Metered`] borrow the transport for one inference.
impl Transport for &mut TcpTransport {
    fn role(&self) -> Role {
        (**self).role()
    }
    fn send(&mut self, to: Role, msg: Vec<u8>) -> std::result::Result<(), TransportError> {
        (**self).send(to, msg)
    }
    fn recv(&mut self, from: Role) -> std::result::Result<Vec<u8>, TransportError> {
        (**self).recv(from)
    }
    fn set_scope(&mut self, layer: &str, op: &str) {
        (**self).set_scope(layer, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_holds_the_reader_until_the_consumer_takes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let queued = Arc::new(AtomicUsize::new(0));
        let b = Budget {
            queued: Arc::clone(&queued),
            limit: 100,
        };
        rt.block_on(async {
            // An empty queue takes anything (one frame of at most max_frame).
            b.reserve(150).await;
            assert_eq!(queued.load(Ordering::Acquire), 150);
            // A non-empty queue over its limit holds the reader …
            let held = tokio::time::timeout(Duration::from_millis(50), b.reserve(10)).await;
            assert!(held.is_err());
            // … until the consumer takes.
            queued.fetch_sub(150, Ordering::AcqRel);
            b.reserve(60).await;
            b.reserve(40).await;
            assert_eq!(queued.load(Ordering::Acquire), 100);
            assert!(
                tokio::time::timeout(Duration::from_millis(50), b.reserve(1))
                    .await
                    .is_err()
            );
        });
    }
}
