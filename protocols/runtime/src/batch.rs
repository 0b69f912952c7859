//! Batched inference: `N` images in one inference, every round of the protocol carrying all
//! `N` of them, so that a batch costs the rounds of one image (issue 20).
//!
//! **Lockstep lanes.** Each image of a batch runs the backend's own per-image protocol in a
//! *lane*: a thread with its own [`PartySession`](knapsec_core::backend::PartySession) and a
//! [`Lane`] transport. A protocol's message schedule — which peer, in which order — depends
//! only on the public model and options, never on the input, so the `k`-th message that any
//! lane of a party sends to a peer is the `k`-th of every other lane too. The lanes of a party
//! share one underlying transport through [`Lanes`]: the `k`-th messages of all lanes to a
//! peer travel as one *bundle* (one message of the underlying transport), and a bundle
//! received from a peer is split among the lanes. Rounds per batch therefore equal rounds per
//! image; bytes are the lanes' bytes plus 8 bytes of length per lane and bundle. Any backend
//! gets batching this way, with its protocol, its secure model and the handshake unchanged.
//!
//! **No deadlock.** A lane that needs a bundle not yet received reads the underlying
//! transport only when no outgoing bundle is partly filled: a partly filled bundle means
//! that some lane has not yet sent what the schedule sends before that read, and the peer
//! may need it to answer. Once every lane has sent it, the bundle goes out and the read can
//! block safely. While one lane reads, the others wait for the bundle it brings.
//!
//! **Failures.** A lane that fails (or whose transport fails) marks the batch failed: every
//! waiting lane returns an error at once instead of waiting for a message that will never be
//! sent. [`run_lanes`] reports the first failure in time, not its consequences.

use knapsec_core::backend::BackendError;
use knapsec_core::transport::{Role, Transport, TransportError};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

/// Bytes of framing per lane in a bundle: the length of the lane's message.
pub const BUNDLE_OVERHEAD_PER_LANE: usize = 8;

/// Bytes of a bundle that carries messages of the given lengths.
pub fn bundle_len(lengths: impl IntoIterator<Item = usize>) -> usize {
    lengths
        .into_iter()
        .map(|l| l + BUNDLE_OVERHEAD_PER_LANE)
        .sum()
}

/// The most payload bytes of one bundle of `lanes` messages of at most `max_message` bytes:
/// the frame limit a batched deployment needs.
pub fn max_bundle(lanes: usize, max_message: u64) -> u64 {
    lanes as u64 * (max_message + BUNDLE_OVERHEAD_PER_LANE as u64)
}

/// Joins the messages of every lane, in lane order, into one bundle.
fn encode(parts: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bundle_len(parts.iter().map(Vec::len)));
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(&p);
    }
    out
}

/// Splits a bundle from `peer` into exactly `lanes` messages; any other layout is an error
/// naming the peer (no length is trusted beyond the bytes actually received).
fn decode(peer: Role, bundle: &[u8], lanes: usize) -> Result<Vec<Vec<u8>>, TransportError> {
    let bad = |what: String| TransportError::Io {
        peer,
        message: format!("malformed batch bundle ({what})"),
    };
    let mut parts = Vec::with_capacity(lanes);
    let mut rest = bundle;
    for lane in 0..lanes {
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return Err(bad(format!(
                "{} bytes, ends before lane {lane} of {lanes}",
                bundle.len()
            )));
        };
        let len = u64::from_le_bytes(*len);
        if len > tail.len() as u64 {
            return Err(bad(format!(
                "lane {lane} announces {len} bytes, {} remain",
                tail.len()
            )));
        }
        let (msg, tail) = tail.split_at(len as usize);
        parts.push(msg.to_vec());
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad(format!(
            "{} bytes after the {lanes} lanes' messages",
            rest.len()
        )));
    }
    Ok(parts)
}

/// One peer's traffic in both directions, as the lanes see it.
#[derive(Default)]
struct PeerState {
    /// Outgoing bundles not yet sent, by sequence number: one slot per lane.
    outgoing: BTreeMap<u64, Vec<Option<Vec<u8>>>>,
    /// Sequence number of the next bundle to send to the peer.
    next_out: u64,
    /// Messages sent to the peer by each lane so far.
    sent: Vec<u64>,
    /// Received bundles not yet taken by every lane, from sequence number `first_in`.
    incoming: VecDeque<Vec<Option<Vec<u8>>>>,
    /// Sequence number of `incoming[0]`.
    first_in: u64,
    /// Messages taken from the peer by each lane so far.
    taken: Vec<u64>,
}

struct State<'t> {
    /// The underlying transport; `None` while a lane reads from it outside the lock.
    transport: Option<&'t mut dyn Transport>,
    peers: BTreeMap<Role, PeerState>,
    /// The first failure, with the lane it happened in.
    failed: Option<(usize, String)>,
    /// Which lanes have finished their work.
    finished: Vec<bool>,
}

impl State<'_> {
    /// True if some outgoing bundle is partly filled.
    fn partly_sent(&self) -> bool {
        self.peers.values().any(|p| !p.outgoing.is_empty())
    }
}

/// The lanes of one party over one underlying transport.
pub struct Lanes<'t> {
    lanes: usize,
    role: Role,
    state: Mutex<State<'t>>,
    changed: Condvar,
}

impl std::fmt::Debug for Lanes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("lanes", &self.lanes)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl<'t> Lanes<'t> {
    /// `lanes` lanes (at least one) over `transport`.
    pub fn new(transport: &'t mut dyn Transport, lanes: usize) -> Self {
        assert!(lanes >= 1, "a batch has at least one lane");
        let role = transport.role();
        let peers = role
            .others()
            .into_iter()
            .map(|p| {
                let st = PeerState {
                    sent: vec![0; lanes],
                    taken: vec![0; lanes],
                    ..PeerState::default()
                };
                (p, st)
            })
            .collect();
        Lanes {
            lanes,
            role,
            state: Mutex::new(State {
                transport: Some(transport),
                peers,
                failed: None,
                finished: vec![false; lanes],
            }),
            changed: Condvar::new(),
        }
    }

    /// Number of lanes.
    pub fn len(&self) -> usize {
        self.lanes
    }

    /// Always false: a batch has at least one lane.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The transport of lane `index`.
    pub fn lane(&self, index: usize) -> Lane<'_, 't> {
        assert!(index < self.lanes, "lane {index} of {}", self.lanes);
        Lane { lanes: self, index }
    }

    fn lock(&self) -> MutexGuard<'_, State<'t>> {
        // A lane that panicked has already marked the batch failed; its state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'g>(&self, guard: MutexGuard<'g, State<'t>>) -> MutexGuard<'g, State<'t>> {
        self.changed.wait(guard).unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the batch failed by `lane` (the first failure is kept) and wakes every lane.
    pub fn fail(&self, lane: usize, why: &str) {
        let mut st = self.lock();
        if st.failed.is_none() {
            st.failed = Some((lane, why.to_string()));
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Marks lane `lane` finished; a lane still waiting for a message that a finished lane
    /// would have had to send fails instead of waiting for ever.
    pub fn finish(&self, lane: usize) {
        self.lock().finished[lane] = true;
        self.changed.notify_all();
    }

    /// An error if some message was sent by some lanes but never by a lane that has
    /// finished: the lanes did not follow one schedule.
    pub fn check_complete(&self) -> Result<(), TransportError> {
        let st = self.lock();
        match st.peers.iter().find(|(_, p)| !p.outgoing.is_empty()) {
            Some((peer, _)) => Err(self.diverged(*peer)),
            None => Ok(()),
        }
    }

    /// The lane that failed first, if any.
    pub fn first_failure(&self) -> Option<usize> {
        self.lock().failed.as_ref().map(|f| f.0)
    }

    fn failed_err(&self, st: &State<'_>, peer: Role) -> Option<TransportError> {
        let (lane, why) = st.failed.as_ref()?;
        Some(TransportError::Io {
            peer,
            message: format!("batch lane {lane} failed: {why}"),
        })
    }

    fn diverged(&self, peer: Role) -> TransportError {
        TransportError::Io {
            peer,
            message: "the lanes of a batch diverged: a lane finished while another still \
                      exchanged messages"
                .into(),
        }
    }

    fn send(&self, lane: usize, to: Role, msg: Vec<u8>) -> Result<(), TransportError> {
        let mut guard = self.lock();
        if let Some(e) = self.failed_err(&guard, to) {
            return Err(e);
        }
        let lanes = self.lanes;
        let st = &mut *guard;
        let Some(peer) = st.peers.get_mut(&to) else {
            return Err(TransportError::SelfMessage { peer: to });
        };
        let seq = peer.sent[lane];
        peer.sent[lane] += 1;
        let slots = peer
            .outgoing
            .entry(seq)
            .or_insert_with(|| vec![None; lanes]);
        slots[lane] = Some(msg);
        if slots
            .iter()
            .zip(&st.finished)
            .any(|(s, f)| s.is_none() && *f)
        {
            drop(guard);
            let e = self.diverged(to);
            self.fail(lane, &e.to_string());
            return Err(e);
        }
        // Send every bundle that is complete, in order.
        let mut ready = Vec::new();
        while let Some(slots) = peer.outgoing.get(&peer.next_out) {
            if slots.iter().any(Option::is_none) {
                break;
            }
            let slots = peer.outgoing.remove(&peer.next_out).expect("present");
            ready.push(encode(slots.into_iter().map(Option::unwrap).collect()));
            peer.next_out += 1;
        }
        if ready.is_empty() {
            return Ok(());
        }
        let mut st = guard;
        // Only a reader holds the transport outside the lock, and no bundle can complete
        // while it reads (see the module documentation); wait for it all the same.
        while st.transport.is_none() {
            if let Some(e) = self.failed_err(&st, to) {
                return Err(e);
            }
            st = self.wait(st);
        }
        let t = st.transport.as_mut().expect("checked");
        let mut result = Ok(());
        for bundle in ready {
            if let Err(e) = t.send(to, bundle) {
                result = Err(e);
                break;
            }
        }
        drop(st);
        self.changed.notify_all();
        if let Err(e) = &result {
            self.fail(lane, &e.to_string());
        }
        result
    }

    fn recv(&self, lane: usize, from: Role) -> Result<Vec<u8>, TransportError> {
        let mut st = self.lock();
        loop {
            if let Some(e) = self.failed_err(&st, from) {
                return Err(e);
            }
            let lanes = self.lanes;
            let Some(peer) = st.peers.get_mut(&from) else {
                return Err(TransportError::SelfMessage { peer: from });
            };
            let seq = peer.taken[lane];
            let offset = (seq - peer.first_in) as usize;
            if let Some(slots) = peer.incoming.get_mut(offset) {
                let msg = slots[lane].take().expect("each lane takes its part once");
                peer.taken[lane] += 1;
                // Drop bundles every lane has taken its part of.
                while peer
                    .incoming
                    .front()
                    .is_some_and(|b| b.iter().all(Option::is_none))
                {
                    peer.incoming.pop_front();
                    peer.first_in += 1;
                }
                return Ok(msg);
            }
            if st.finished.iter().any(|f| *f) {
                let e = self.diverged(from);
                drop(st);
                self.fail(lane, &e.to_string());
                return Err(e);
            }
            if st.transport.is_none() || st.partly_sent() {
                // Another lane reads, or some lane still has to send what comes first.
                st = self.wait(st);
                continue;
            }
            let t = st.transport.take().expect("checked");
            drop(st);
            let got = t.recv(from);
            st = self.lock();
            st.transport = Some(t);
            let parts = got.and_then(|bundle| decode(from, &bundle, lanes));
            match parts {
                Ok(parts) => {
                    let peer = st.peers.get_mut(&from).expect("a peer");
                    peer.incoming
                        .push_back(parts.into_iter().map(Some).collect());
                    drop(st);
                    self.changed.notify_all();
                    st = self.lock();
                }
                Err(e) => {
                    drop(st);
                    self.fail(lane, &e.to_string());
                    return Err(e);
                }
            }
        }
    }

    fn set_scope(&self, lane: usize, layer: &str, op: &str) {
        // Every lane follows the same schedule: lane 0 names it for all.
        if lane != 0 {
            return;
        }
        let mut st = self.lock();
        while st.transport.is_none() {
            if st.failed.is_some() {
                return;
            }
            st = self.wait(st);
        }
        st.transport.as_mut().expect("checked").set_scope(layer, op);
    }
}

/// The transport of one lane of a batch.
pub struct Lane<'l, 't> {
    lanes: &'l Lanes<'t>,
    index: usize,
}

impl std::fmt::Debug for Lane<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("index", &self.index).finish()
    }
}

impl Transport for Lane<'_, '_> {
    fn role(&self) -> Role {
        self.lanes.role
    }

    fn send(&mut self, to: Role, msg: Vec<u8>) -> Result<(), TransportError> {
        self.lanes.send(self.index, to, msg)
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError> {
        self.lanes.recv(self.index, from)
    }

    fn set_scope(&mut self, layer: &str, op: &str) {
        self.lanes.set_scope(self.index, layer, op);
    }
}

/// The backend error of lanes that did not follow one message schedule (for
/// [`run_lanes`]' `on_divergence` when the lanes run a backend).
pub fn diverged(source: TransportError) -> BackendError {
    BackendError::Transport {
        layer: "batch".into(),
        source,
    }
}

/// Runs `work(index, item, transport)` for every item in its own lane (a scoped thread) over
/// `transport`, and returns the lanes' results in order. A single item runs on the calling
/// thread over `transport` itself, with no bundling. On failure, the error of the lane that
/// failed first (the others fail as its consequence) is returned; lanes that all succeed
/// but left a message unsent (they did not follow one schedule) give `on_divergence`'s error.
///
/// # Errors
/// The first lane's error in time.
pub fn run_lanes<I, T, E>(
    transport: &mut dyn Transport,
    items: Vec<I>,
    work: impl Fn(usize, I, &mut dyn Transport) -> Result<T, E> + Sync,
    on_divergence: impl FnOnce(TransportError) -> E,
) -> Result<Vec<T>, E>
where
    I: Send,
    T: Send,
    E: Send + std::fmt::Display,
{
    if items.len() == 1 {
        let item = items.into_iter().next().expect("one item");
        return work(0, item, transport).map(|t| vec![t]);
    }
    let lanes = Lanes::new(transport, items.len().max(1));
    let results: Vec<Result<T, E>> = std::thread::scope(|s| {
        let handles: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                let lanes = &lanes;
                let work = &work;
                std::thread::Builder::new()
                    .name(format!("batch-lane-{i}"))
                    .spawn_scoped(s, move || {
                        let mut lane = lanes.lane(i);
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            work(i, item, &mut lane)
                        }));
                        match &r {
                            Ok(Ok(_)) => lanes.finish(i),
                            Ok(Err(e)) => lanes.fail(i, &e.to_string()),
                            Err(_) => lanes.fail(i, "the lane panicked"),
                        }
                        r
                    })
                    .expect("spawn a batch lane")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(r)) => r,
                Ok(Err(p)) | Err(p) => std::panic::resume_unwind(p),
            })
            .collect()
    });
    let first = lanes.first_failure();
    let mut out = Vec::with_capacity(results.len());
    let mut errors: Vec<(usize, E)> = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(t) => out.push(t),
            Err(e) => errors.push((i, e)),
        }
    }
    if errors.is_empty() {
        return match lanes.check_complete() {
            Ok(()) => Ok(out),
            Err(e) => Err(on_divergence(e)),
        };
    }
    let pick = errors
        .iter()
        .position(|(i, _)| Some(*i) == first)
        .unwrap_or(0);
    Err(errors.swap_remove(pick).1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use knapsec_net::{Metered, memory_network};

    /// A toy protocol with a fixed schedule: the client sends its value to the server, the
    /// server answers with value + 1 to the client and value · 2 to the helper, the helper
    /// answers the client. Each lane works on its own value.
    fn toy(role: Role, value: u64, t: &mut dyn Transport) -> Result<u64, TransportError> {
        let get = |b: Vec<u8>| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        match role {
            Role::Client => {
                t.send(Role::Server, value.to_le_bytes().to_vec())?;
                let a = get(t.recv(Role::Server)?);
                let b = get(t.recv(Role::Helper)?);
                Ok(a + b)
            }
            Role::Server => {
                let v = get(t.recv(Role::Client)?);
                t.send(Role::Client, (v + 1).to_le_bytes().to_vec())?;
                t.send(Role::Helper, (v * 2).to_le_bytes().to_vec())?;
                Ok(0)
            }
            Role::Helper => {
                let v = get(t.recv(Role::Server)?);
                t.send(Role::Client, (v + 100).to_le_bytes().to_vec())?;
                Ok(0)
            }
        }
    }

    fn run_batch(n: usize) -> (Vec<u64>, Vec<knapsec_net::CommReport>) {
        let nets = memory_network();
        let handles: Vec<_> = nets
            .into_iter()
            .map(|t| {
                std::thread::spawn(move || {
                    let mut m = Metered::new(t);
                    let role = m.role();
                    let out = run_lanes(
                        &mut m,
                        (0..n as u64).collect(),
                        |_, v, t| toy(role, v * 10, t),
                        |e| e,
                    )
                    .expect("batch runs");
                    (out, m.report())
                })
            })
            .collect();
        let mut outs = Vec::new();
        let mut reports = Vec::new();
        for h in handles {
            let (o, r) = h.join().expect("party");
            outs.push(o);
            reports.push(r);
        }
        (outs.swap_remove(0), reports)
    }

    #[test]
    fn lanes_get_their_own_results_and_share_the_rounds() {
        let (one, one_reports) = run_batch(1);
        assert_eq!(one, vec![1 + 100]);
        for n in [2, 3, 8] {
            let (out, reports) = run_batch(n);
            let want: Vec<u64> = (0..n as u64)
                .map(|v| (v * 10 + 1) + (v * 20 + 100))
                .collect();
            assert_eq!(out, want, "{n} lanes");
            for (r, r1) in reports.iter().zip(&one_reports) {
                assert_eq!(r.rounds, r1.rounds, "rounds with {n} lanes");
                assert_eq!(r.messages, r1.messages, "messages with {n} lanes");
                assert_eq!(
                    r.bytes,
                    n as u64 * (r1.bytes + r1.messages * BUNDLE_OVERHEAD_PER_LANE as u64),
                    "bytes with {n} lanes"
                );
            }
        }
    }

    #[test]
    fn bundles_round_trip_and_malformed_ones_are_refused() {
        let parts = vec![vec![1u8, 2, 3], vec![], vec![9u8; 20]];
        let b = encode(parts.clone());
        assert_eq!(b.len(), bundle_len([3, 0, 20]));
        assert_eq!(decode(Role::Server, &b, 3).expect("decodes"), parts);
        for bad in [&b[..b.len() - 1], &b[..5], &[]] {
            let e = decode(Role::Server, bad, 3).expect_err("short");
            assert!(e.to_string().contains("malformed batch bundle"), "{e}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(decode(Role::Server, &long, 3).is_err());
        assert!(decode(Role::Server, &b, 2).is_err());
        let mut huge = b.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(Role::Server, &huge, 3).is_err());
    }

    #[test]
    fn a_failing_lane_stops_the_others_with_its_error() {
        let nets = memory_network();
        let handles: Vec<_> = nets
            .into_iter()
            .map(|mut t| {
                std::thread::spawn(move || {
                    let role = t.role();
                    run_lanes(
                        &mut t,
                        vec![0u64, 1, 2],
                        |i, v, t| {
                            if role == Role::Server && i == 1 {
                                return Err(TransportError::Io {
                                    peer: Role::Client,
                                    message: "lane one gives up".into(),
                                });
                            }
                            toy(role, v, t)
                        },
                        |e| e,
                    )
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect();
        let server = results[1].as_ref().expect_err("the server fails");
        assert!(server.to_string().contains("lane one gives up"), "{server}");
        // The client and the helper do not hang: their peer's transport is dropped.
        assert!(results[0].is_err() && results[2].is_err());
    }
}
