//! In-memory transport: three [`Transport`] endpoints joined by channels, one per directed
//! pair of parties (DESIGN §5). Used by tests and by `knapsec simulate`, where the three
//! parties run as threads of one process.
//!
//! A dropped endpoint closes its channels: its peers' `recv` then fails with
//! [`TransportError::Disconnected`] naming the dropped party (after draining what it had
//! already sent), and their `send` fails the same way, so a party that dies never leaves the
//! others hanging. An optional receive timeout turns a silent peer into
//! [`TransportError::Timeout`].

use knapsec_core::transport::{Role, Transport, TransportError};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// One party's end of an in-memory three-party network.
pub struct MemoryTransport {
    role: Role,
    /// Senders to the two other roles, in `role.others()` order.
    tx: [Sender<Vec<u8>>; 2],
    /// Receivers from the two other roles, in `role.others()` order.
    rx: [Receiver<Vec<u8>>; 2],
    timeout: Option<Duration>,
    scope: String,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryTransport({})", self.role)
    }
}

/// Creates the three connected endpoints, in [`Role::ALL`] order (client, server, helper).
pub fn memory_network() -> [MemoryTransport; 3] {
    // chan[from][to]
    let mut senders: Vec<Vec<Option<Sender<Vec<u8>>>>> = vec![
        vec![None, None, None],
        vec![None, None, None],
        vec![None, None, None],
    ];
    let mut receivers: Vec<Vec<Option<Receiver<Vec<u8>>>>> = vec![
        vec![None, None, None],
        vec![None, None, None],
        vec![None, None, None],
    ];
    for from in Role::ALL {
        for to in from.others() {
            let (tx, rx) = mpsc::channel();
            senders[from.index()][to.index()] = Some(tx);
            receivers[to.index()][from.index()] = Some(rx);
        }
    }
    Role::ALL.map(|role| {
        let [a, b] = role.others();
        let i = role.index();
        MemoryTransport {
            role,
            tx: [
                senders[i][a.index()].take().unwrap(),
                senders[i][b.index()].take().unwrap(),
            ],
            rx: [
                receivers[i][a.index()].take().unwrap(),
                receivers[i][b.index()].take().unwrap(),
            ],
            timeout: None,
            scope: String::new(),
        }
    })
}

impl MemoryTransport {
    /// Sets a receive timeout (`None`: wait forever, the default).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    /// Builder form of [`MemoryTransport::set_timeout`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn slot(&self, peer: Role) -> Result<usize, TransportError> {
        self.role
            .others()
            .iter()
            .position(|&r| r == peer)
            .ok_or(TransportError::SelfMessage { peer })
    }

    fn context(&self) -> String {
        if self.scope.is_empty() {
            String::new()
        } else {
            format!(" during {}", self.scope)
        }
    }
}

impl Transport for MemoryTransport {
    fn role(&self) -> Role {
        self.role
    }

    fn send(&mut self, to: Role, msg: Vec<u8>) -> Result<(), TransportError> {
        let i = self.slot(to)?;
        self.tx[i]
            .send(msg)
            .map_err(|_| TransportError::Disconnected {
                peer: to,
                context: self.context(),
            })
    }

    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError> {
        let i = self.slot(from)?;
        match self.timeout {
            None => self.rx[i].recv().map_err(|_| TransportError::Disconnected {
                peer: from,
                context: self.context(),
            }),
            Some(t) => self.rx[i].recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => TransportError::Timeout {
                    peer: from,
                    context: self.context(),
                },
                RecvTimeoutError::Disconnected => TransportError::Disconnected {
                    peer: from,
                    context: self.context(),
                },
            }),
        }
    }

    fn set_scope(&mut self, layer: &str, op: &str) {
        self.scope = format!("layer {layer:?}, op {op}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_in_order_per_pair() {
        let [mut c, mut s, mut h] = memory_network();
        c.send(Role::Server, vec![1]).unwrap();
        c.send(Role::Server, vec![2, 3]).unwrap();
        h.send(Role::Server, vec![9]).unwrap();
        assert_eq!(s.recv(Role::Helper).unwrap(), vec![9]);
        assert_eq!(s.recv(Role::Client).unwrap(), vec![1]);
        assert_eq!(s.recv(Role::Client).unwrap(), vec![2, 3]);
        s.send(Role::Client, vec![]).unwrap();
        assert_eq!(c.recv(Role::Server).unwrap(), Vec::<u8>::new());
        assert!(matches!(
            c.send(Role::Client, vec![]),
            Err(TransportError::SelfMessage { .. })
        ));
        drop(h);
    }

    #[test]
    fn dropped_peer_is_an_error_not_a_hang() {
        let [mut c, s, h] = memory_network();
        c.send(Role::Server, vec![1]).unwrap();
        drop(s);
        c.set_scope("layer1_0_1", "drelu");
        let err = c.recv(Role::Server).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Disconnected {
                    peer: Role::Server,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string().contains("server") && err.to_string().contains("layer1_0_1"),
            "{err}"
        );
        assert!(matches!(
            c.send(Role::Server, vec![2]),
            Err(TransportError::Disconnected {
                peer: Role::Server,
                ..
            })
        ));
        // A message sent before the drop is still delivered.
        let [c2, mut s2, _h2] = memory_network();
        let mut c2 = c2;
        c2.send(Role::Server, vec![7]).unwrap();
        drop(c2);
        assert_eq!(s2.recv(Role::Client).unwrap(), vec![7]);
        assert!(s2.recv(Role::Client).is_err());
        drop(h);
    }

    #[test]
    fn timeout_names_the_silent_peer() {
        let [mut c, _s, _h] = memory_network();
        c.set_timeout(Some(Duration::from_millis(20)));
        let err = c.recv(Role::Helper).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Timeout {
                    peer: Role::Helper,
                    ..
                }
            ),
            "{err}"
        );
    }
}
