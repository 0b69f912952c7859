//! The metering decorator: [`Metered`] wraps any [`Transport`] and counts what its party
//! sends, in bytes (payload only, no framing) and messages, per directed pair of parties, per
//! layer and per op kind (taken from [`Transport::set_scope`]), plus rounds (digest §6.13).
//!
//! **Rounds.** Two definitions, both reported:
//! * *Flights* (local, works with any peer): a party starts a new flight when it sends after
//!   having received something since its previous send (its first send is flight 1). A
//!   party's flight count is the number of times it had to wait for a peer before speaking.
//! * *Causal depth* (needs a shared [`RoundTracker`], i.e. all three parties in one process):
//!   a message's depth is one more than the largest depth of any message its sender had
//!   received before sending it; the protocol's round count is the largest depth of any
//!   message, i.e. the number of sequential message latencies on the critical path.
//!   Messages sent back to back, or by different parties at the same time, share a round.
//!   Each increase of the maximal depth is charged to the scope (layer, op) of the message
//!   that caused it, so per-layer and per-op rounds add up to the total.

use knapsec_core::transport::{Role, Transport, TransportError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// Bytes, messages and rounds of one slice of the traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Payload bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
    /// Causal rounds charged to this slice (0 without a [`RoundTracker`]).
    pub rounds: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.bytes += other.bytes;
        self.messages += other.messages;
        self.rounds += other.rounds;
    }
}

/// One layer's traffic, with its per-op breakdown.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerCounts {
    /// The layer's name.
    pub layer: String,
    /// The layer's total.
    #[serde(flatten)]
    pub counts: Counts,
    /// The layer's traffic per op.
    pub ops: BTreeMap<String, Counts>,
}

/// A communication report: one party's sent traffic, or the merge of all three.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommReport {
    /// Payload bytes.
    pub bytes: u64,
    /// Messages.
    pub messages: u64,
    /// Causal rounds if a [`RoundTracker`] was shared, otherwise the largest flight count.
    pub rounds: u64,
    /// Flights per sending party (see the module docs).
    pub flights: BTreeMap<String, u64>,
    /// Per directed pair, keyed `"client->server"`.
    pub pairs: BTreeMap<String, Counts>,
    /// Per op kind, over all layers.
    pub ops: BTreeMap<String, Counts>,
    /// Per layer, in the order the layers first sent something.
    pub layers: Vec<LayerCounts>,
}

impl CommReport {
    /// Adds another report (typically another party's) into this one. Rounds are taken as the
    /// maximum, since every party's report carries the shared tracker's total.
    pub fn merge(&mut self, other: &CommReport) {
        self.bytes += other.bytes;
        self.messages += other.messages;
        self.rounds = self.rounds.max(other.rounds);
        for (k, v) in &other.flights {
            *self.flights.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.pairs {
            self.pairs.entry(k.clone()).or_default().add(v);
        }
        for (k, v) in &other.ops {
            self.ops.entry(k.clone()).or_default().add(v);
        }
        for l in &other.layers {
            match self.layers.iter_mut().find(|x| x.layer == l.layer) {
                Some(x) => {
                    x.counts.add(&l.counts);
                    for (k, v) in &l.ops {
                        x.ops.entry(k.clone()).or_default().add(v);
                    }
                }
                None => self.layers.push(l.clone()),
            }
        }
    }

    /// The traffic of one op kind (zero if absent).
    pub fn op(&self, op: &str) -> Counts {
        self.ops.get(op).copied().unwrap_or_default()
    }

    /// The traffic of one layer (zero if absent).
    pub fn layer(&self, layer: &str) -> Counts {
        self.layers
            .iter()
            .find(|l| l.layer == layer)
            .map(|l| l.counts)
            .unwrap_or_default()
    }

    /// The traffic from `from` to `to` (zero if absent).
    pub fn pair(&self, from: Role, to: Role) -> Counts {
        self.pairs
            .get(&pair_key(from, to))
            .copied()
            .unwrap_or_default()
    }
}

fn pair_key(from: Role, to: Role) -> String {
    format!("{from}->{to}")
}

#[derive(Default)]
struct TrackerState {
    /// Depths of messages in flight, per directed pair (FIFO like the channels).
    queues: HashMap<(Role, Role), VecDeque<u64>>,
    /// Largest depth each party has received.
    seen: [u64; 3],
    max: u64,
    /// Rounds charged per (layer, op).
    charged: HashMap<(String, String), u64>,
}

/// Causal-depth bookkeeping shared by the three [`Metered`] endpoints of one process.
#[derive(Clone, Default)]
pub struct RoundTracker(Arc<Mutex<TrackerState>>);

impl std::fmt::Debug for RoundTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RoundTracker(rounds = {})", self.rounds())
    }
}

impl RoundTracker {
    /// A fresh tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rounds so far (largest message depth).
    pub fn rounds(&self) -> u64 {
        self.0.lock().map(|s| s.max).unwrap_or(0)
    }

    /// Forgets all depths, to count a new phase from zero. Call only while no message is in
    /// flight (e.g. behind a barrier of the three parties).
    pub fn reset(&self) {
        if let Ok(mut s) = self.0.lock() {
            *s = TrackerState::default();
        }
    }

    fn on_send(&self, from: Role, to: Role, layer: &str, op: &str) {
        let Ok(mut s) = self.0.lock() else { return };
        let depth = s.seen[from.index()] + 1;
        s.queues.entry((from, to)).or_default().push_back(depth);
        if depth > s.max {
            let extra = depth - s.max;
            s.max = depth;
            *s.charged
                .entry((layer.to_string(), op.to_string()))
                .or_default() += extra;
        }
    }

    fn on_recv(&self, from: Role, to: Role) {
        let Ok(mut s) = self.0.lock() else { return };
        if let Some(d) = s.queues.get_mut(&(from, to)).and_then(|q| q.pop_front()) {
            let seen = &mut s.seen[to.index()];
            *seen = (*seen).max(d);
        }
    }

    fn charged(&self) -> HashMap<(String, String), u64> {
        self.0.lock().map(|s| s.charged.clone()).unwrap_or_default()
    }
}

/// A [`Transport`] decorator that meters the traffic its party sends.
pub struct Metered<T: Transport> {
    inner: T,
    tracker: Option<RoundTracker>,
    layer: String,
    op: String,
    received_since_send: bool,
    sent_any: bool,
    flights: u64,
    report: CommReport,
}

impl<T: Transport> std::fmt::Debug for Metered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Metered({}, {} bytes sent)",
            self.inner.role(),
            self.report.bytes
        )
    }
}

impl<T: Transport> Metered<T> {
    /// Meters `inner`; rounds are flights only.
    pub fn new(inner: T) -> Self {
        Metered {
            inner,
            tracker: None,
            layer: String::new(),
            op: String::new(),
            received_since_send: false,
            sent_any: false,
            flights: 0,
            report: CommReport::default(),
        }
    }

    /// Meters `inner` and records causal depth in `tracker` (shared by all three parties).
    pub fn with_tracker(inner: T, tracker: RoundTracker) -> Self {
        Metered {
            tracker: Some(tracker),
            ..Self::new(inner)
        }
    }

    /// The wrapped transport.
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// The traffic this party sent so far. With a tracker, the rounds fields hold the shared
    /// causal rounds (the same in every party's report).
    pub fn report(&self) -> CommReport {
        let mut r = self.report.clone();
        r.flights
            .insert(self.inner.role().to_string(), self.flights);
        match &self.tracker {
            Some(t) => {
                r.rounds = t.rounds();
                for c in r.ops.values_mut() {
                    c.rounds = 0;
                }
                for l in &mut r.layers {
                    l.counts.rounds = 0;
                    for c in l.ops.values_mut() {
                        c.rounds = 0;
                    }
                }
                // Charged rounds are global; only the client's report carries them, so that
                // merging three reports does not count them three times.
                if self.inner.role() == Role::Client {
                    for ((layer, op), n) in t.charged() {
                        r.ops.entry(op.clone()).or_default().rounds += n;
                        let l = match r.layers.iter().position(|x| x.layer == layer) {
                            Some(i) => &mut r.layers[i],
                            None => {
                                r.layers.push(LayerCounts {
                                    layer: layer.clone(),
                                    ..Default::default()
                                });
                                r.layers.last_mut().unwrap()
                            }
                        };
                        l.counts.rounds += n;
                        l.ops.entry(op).or_default().rounds += n;
                    }
                }
            }
            None => r.rounds = self.flights,
        }
        r
    }

    /// Returns the report so far and starts counting afresh (the tracker is not reset).
    pub fn take_report(&mut self) -> CommReport {
        let r = self.report();
        self.report = CommReport::default();
        self.flights = 0;
        self.sent_any = false;
        self.received_since_send = false;
        r
    }
}

impl<T: Transport> Transport for Metered<T> {
    fn role(&self) -> Role {
        self.inner.role()
    }

    fn send(&mut self, to: Role, msg: Vec<u8>) -> Result<(), TransportError> {
        let me = self.inner.role();
        let n = msg.len() as u64;
        if let Some(t) = &self.tracker {
            t.on_send(me, to, &self.layer, &self.op);
        }
        self.inner.send(to, msg)?;
        if self.received_since_send || !self.sent_any {
            self.flights += 1;
        }
        self.sent_any = true;
        self.received_since_send = false;
        let one = Counts {
            bytes: n,
            messages: 1,
            rounds: 0,
        };
        let r = &mut self.report;
        r.bytes += n;
        r.messages += 1;
        r.pairs.entry(pair_key(me, to)).or_default().add(&one);
        r.ops.entry(self.op.clone()).or_default().add(&one);
        let l = match r.layers.last() {
            Some(l) if l.layer == self.layer => r.layers.last_mut().unwrap(),
            _ => match r.layers.iter().position(|x| x.layer == self.layer) {
                Some(i) => &mut r.layers[i],
                None => {
                    r.layers.push(LayerCounts {
                        layer: self.layer.clone(),
                        ..Default::default()
                    });
                    r.layers.last_mut().unwrap()
                }
            },
        };
        l.counts.add(&one);
        l.ops.entry(self.op.clone()).or_default().add(&one);
        Ok(())
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError> {
        let msg = self.inner.recv(from)?;
        if let Some(t) = &self.tracker {
            t.on_recv(from, self.inner.role());
        }
        self.received_since_send = true;
        Ok(msg)
    }

    fn set_scope(&mut self, layer: &str, op: &str) {
        if self.layer != layer {
            self.layer = layer.to_string();
        }
        if self.op != op {
            self.op = op.to_string();
        }
        self.inner.set_scope(layer, op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::memory_network;

    #[test]
    fn counts_bytes_per_pair_layer_and_op() {
        let [c, s, _h] = memory_network();
        let (mut c, mut s) = (Metered::new(c), Metered::new(s));
        c.set_scope("conv1", "conv");
        c.send(Role::Server, vec![0; 10]).unwrap();
        c.send(Role::Helper, vec![0; 3]).unwrap();
        c.set_scope("relu1", "drelu");
        c.send(Role::Server, vec![0; 5]).unwrap();
        s.recv(Role::Client).unwrap();
        s.recv(Role::Client).unwrap();
        s.set_scope("relu1", "drelu");
        s.send(Role::Client, vec![0; 7]).unwrap();
        let mut r = c.report();
        assert_eq!((r.bytes, r.messages), (18, 3));
        assert_eq!(r.pair(Role::Client, Role::Server).bytes, 15);
        assert_eq!(r.layer("conv1").bytes, 13);
        assert_eq!(r.op("drelu").bytes, 5);
        r.merge(&s.report());
        assert_eq!(r.bytes, 25);
        assert_eq!(
            r.layer("relu1"),
            Counts {
                bytes: 12,
                messages: 2,
                rounds: 0
            }
        );
        assert_eq!(r.pair(Role::Server, Role::Client).messages, 1);
        assert_eq!(
            r.layers
                .iter()
                .map(|l| l.layer.as_str())
                .collect::<Vec<_>>(),
            ["conv1", "relu1"]
        );
    }

    #[test]
    fn flights_count_sends_after_receives() {
        let [c, s, _h] = memory_network();
        let (mut c, mut s) = (Metered::new(c), Metered::new(s));
        c.send(Role::Server, vec![1]).unwrap();
        c.send(Role::Server, vec![2]).unwrap();
        s.recv(Role::Client).unwrap();
        s.send(Role::Client, vec![3]).unwrap();
        c.recv(Role::Server).unwrap();
        c.send(Role::Server, vec![4]).unwrap();
        assert_eq!(c.report().flights["client"], 2);
        assert_eq!(c.report().rounds, 2);
        assert_eq!(s.report().flights["server"], 1);
    }

    #[test]
    fn causal_depth_follows_the_critical_path() {
        // client -> server, server -> helper, helper -> client: 3 rounds; a parallel
        // client -> helper message in round 1 adds none.
        let t = RoundTracker::new();
        let [c, s, h] = memory_network();
        let (mut c, mut s, mut h) = (
            Metered::with_tracker(c, t.clone()),
            Metered::with_tracker(s, t.clone()),
            Metered::with_tracker(h, t.clone()),
        );
        c.set_scope("l", "a");
        c.send(Role::Server, vec![1]).unwrap();
        c.send(Role::Helper, vec![1]).unwrap();
        s.recv(Role::Client).unwrap();
        s.set_scope("l", "b");
        s.send(Role::Helper, vec![2]).unwrap();
        h.recv(Role::Client).unwrap();
        h.recv(Role::Server).unwrap();
        h.set_scope("m", "b");
        h.send(Role::Client, vec![3]).unwrap();
        assert_eq!(t.rounds(), 3);
        let mut r = c.report();
        r.merge(&s.report());
        r.merge(&h.report());
        assert_eq!(r.rounds, 3);
        assert_eq!(r.op("a").rounds, 1);
        assert_eq!(r.op("b").rounds, 2);
        assert_eq!(r.layer("m").rounds, 1);
        assert_eq!(r.bytes, 4);
        t.reset();
        assert_eq!(t.rounds(), 0);
    }
}
