//! Roles of a three-party secure inference and the byte transport between them (DESIGN §5).
//!
//! A [`Transport`] moves whole messages between the caller's role and the two others, in
//! order per pair. Implementations live in `knapsec-net` (in-memory, TCP, metering decorator).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The three parties (digest §6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Holds the input and learns the output.
    Client,
    /// Holds the weights; learns nothing.
    Server,
    /// Deals correlated randomness (the paper's "crypto provider"); learns nothing.
    Helper,
}

impl Role {
    /// The three roles, in this order.
    pub const ALL: [Role; 3] = [Role::Client, Role::Server, Role::Helper];

    /// 0, 1, 2 in the reference's numbering.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The two other roles, in `ALL` order.
    pub fn others(self) -> [Role; 2] {
        match self {
            Role::Client => [Role::Server, Role::Helper],
            Role::Server => [Role::Client, Role::Helper],
            Role::Helper => [Role::Client, Role::Server],
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Helper => "helper",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "client" => Ok(Role::Client),
            "server" => Ok(Role::Server),
            "helper" => Ok(Role::Helper),
            other => Err(format!(
                "unknown role {other:?} (expected client, server or helper)"
            )),
        }
    }
}

/// Errors of a transport; each names the peer involved.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer closed the connection.
    #[error("{peer} disconnected{context}")]
    Disconnected {
        /// The peer.
        peer: Role,
        /// What was being sent or received (empty, or starting with a separator).
        context: String,
    },
    /// The peer sent nothing in time.
    #[error("timed out waiting for {peer}{context}")]
    Timeout {
        /// The peer.
        peer: Role,
        /// What was being waited for (empty, or starting with a separator).
        context: String,
    },
    /// The peer announced a message over the size limit.
    #[error("frame of {size} bytes from {peer} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The peer.
        peer: Role,
        /// The announced size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A message addressed to this party's own role.
    #[error("cannot send to {peer}: it is this party's own role")]
    SelfMessage {
        /// The role.
        peer: Role,
    },
    /// A socket or channel error.
    #[error("{peer}: {message}")]
    Io {
        /// The peer.
        peer: Role,
        /// The error.
        message: String,
    },
}

/// Whole-message, ordered, reliable transport from one role to the two others.
pub trait Transport: Send {
    /// The role of the party using this transport.
    fn role(&self) -> Role;
    /// Queues `msg` for `to`; does not wait for an acknowledgement.
    fn send(&mut self, to: Role, msg: Vec<u8>) -> Result<(), TransportError>;
    /// Waits for the next message from `from`.
    fn recv(&mut self, from: Role) -> Result<Vec<u8>, TransportError>;
    /// Names the layer and operation that the following messages belong to (for metering
    /// and error messages). The default ignores it.
    fn set_scope(&mut self, _layer: &str, _op: &str) {}
}
