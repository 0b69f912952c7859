//! The error type of knapsec-net. Every variant names the party (role), file or address
//! involved, so that a party's one-line exit message says what went wrong where.

use knapsec_core::Role;
use knapsec_core::backend::BackendError;
use knapsec_core::transport::TransportError;
use std::path::PathBuf;

/// Result alias of this crate.
pub type Result<T, E = NetError> = std::result::Result<T, E>;

/// Errors of transports, channels, handshakes and the party driver.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    // === framing ===
    /// A frame's declared payload exceeds the maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    FrameTooLarge { size: usize, max: usize },
    /// A frame header with a kind byte this build does not know.
    #[error("frame of unknown kind {0}")]
    UnknownFrameKind(u8),
    /// A frame that is well-sized but invalid.
    #[error("malformed frame: {0}")]
    MalformedFrame(String),
    /// A decoder that already rejected its input is fed more.
    #[error("the frame stream is already out of sync")]
    DecoderPoisoned,

    // === files ===
    /// A key file is missing, unreadable or malformed.
    #[error("key file {path}: {message}")]
    Key { path: PathBuf, message: String },
    /// The deployment config is missing, unreadable or invalid.
    #[error("deployment config {path}: {message}")]
    Config { path: PathBuf, message: String },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },

    // === connections ===
    /// Could not reach a party before the connect deadline.
    #[error("cannot connect to the {peer} at {address} within {seconds} s: {last}")]
    Connect {
        peer: Role,
        address: String,
        seconds: u64,
        last: String,
    },
    /// Could not listen on an address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    /// A socket error on the connection with a party.
    #[error("connection with the {peer}: {source}")]
    Io { peer: Role, source: std::io::Error },
    /// The authenticated key exchange with a party failed (wrong key, wrong peer, garbage).
    #[error("authenticated handshake with the {peer} failed: {message}")]
    Handshake { peer: Role, message: String },
    /// The peer refused the connection and said why (an unauthenticated notice).
    #[error("the {peer} refused the connection: {reason}")]
    Refused { peer: Role, reason: String },
    /// A phase did not finish in time.
    #[error("timed out after {seconds} s waiting for the {peer} during {phase}")]
    Timeout {
        peer: Role,
        phase: &'static str,
        seconds: u64,
    },

    // === session handshake ===
    /// A party's protocol version, backend, options or model differ from ours.
    #[error("{peer}'s {what} {theirs} differs from {me}'s {ours}")]
    Mismatch {
        what: &'static str,
        peer: Role,
        theirs: String,
        me: Role,
        ours: String,
    },
    /// The peer aborted the session and said why.
    #[error("the {peer} aborted the session: {reason}")]
    Aborted { peer: Role, reason: String },
    /// The peer sent something the session protocol does not allow here.
    #[error("unexpected message from the {peer}: {message}")]
    Protocol { peer: Role, message: String },

    // === layers below and above ===
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The secure backend failed (inference `index` of the session).
    #[error("inference {index}: {source}")]
    Backend { index: u64, source: BackendError },
    /// Anything else, with context.
    #[error("{0}")]
    Invalid(String),
}
