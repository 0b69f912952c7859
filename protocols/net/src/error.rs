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
    #[error(
        "frame of {size} bytes exceeds the maximum of {max} (the largest message the session allows)"
    )]
    FrameTooLarge {
        /// The declared payload size.
        size: usize,
        /// The largest payload allowed.
        max: usize,
    },
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
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The deployment config is missing, unreadable or invalid.
    #[error("deployment config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    // === connections ===
    /// Could not reach a party before the connect deadline.
    #[error("cannot connect to the {peer} at {address} within {seconds} s: {last}")]
    Connect {
        /// The party being reached.
        peer: Role,
        /// Its address.
        address: String,
        /// The connect deadline.
        seconds: u64,
        /// The last attempt's error.
        last: String,
    },
    /// Could not listen on an address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// A socket error on the connection with a party.
    #[error("connection with the {peer}: {source}")]
    Io {
        /// The party at the other end.
        peer: Role,
        /// The socket error.
        source: std::io::Error,
    },
    /// The authenticated key exchange with a party failed (wrong key, wrong peer, garbage).
    #[error("authenticated handshake with the {peer} failed: {message}")]
    Handshake {
        /// The party at the other end.
        peer: Role,
        /// Why it failed.
        message: String,
    },
    /// The peer refused the connection and said why (an unauthenticated notice).
    #[error("the {peer} refused the connection: {reason}")]
    Refused {
        /// The party that refused.
        peer: Role,
        /// The reason it gave.
        reason: String,
    },
    /// A phase did not finish in time.
    #[error("timed out after {seconds} s waiting for the {peer} during {phase}")]
    Timeout {
        /// The party waited for.
        peer: Role,
        /// What was being waited for.
        phase: &'static str,
        /// The deadline.
        seconds: u64,
    },

    // === session handshake ===
    /// A party's protocol version, backend, options or model differ from ours.
    #[error("{peer}'s {what} {theirs} differs from {me}'s {ours}")]
    Mismatch {
        /// What differs (protocol version, backend, options, model).
        what: &'static str,
        /// The other party.
        peer: Role,
        /// Its value.
        theirs: String,
        /// This party.
        me: Role,
        /// This party's value.
        ours: String,
    },
    /// The peer aborted the session and said why.
    #[error("the {peer} aborted the session: {reason}")]
    Aborted {
        /// The party that aborted.
        peer: Role,
        /// The reason it gave.
        reason: String,
    },
    /// The peer sent something the session protocol does not allow here.
    #[error("unexpected message from the {peer}: {message}")]
    Protocol {
        /// The party that sent it.
        peer: Role,
        /// What was wrong.
        message: String,
    },

    // === layers below and above ===
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The secure backend failed (inference `index` of the session).
    #[error("inference {index}: {source}")]
    Backend {
        /// The inference's index in the session.
        index: u64,
        /// The backend's error.
        source: BackendError,
    },
    /// Anything else, with context.
    #[error("{0}")]
    Invalid(String),
}

/// Longest peer-supplied text (in characters) that reaches a log, an error or a terminal.
pub const PEER_TEXT_MAX: usize = 300;

/// Text that a peer sent (an abort reason, a refusal, a hello field), made safe to print:
/// decoded lossily, every control character (terminal escapes, newlines, bidirectional
/// overrides) replaced by `�`, and cut to [`PEER_TEXT_MAX`] characters with `…` marking the cut.
pub fn peer_text(bytes: &[u8]) -> String {
    clean_text(&String::from_utf8_lossy(bytes))
}

/// [`peer_text`] for text already decoded.
pub fn clean_text(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == PEER_TEXT_MAX {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}');
        out.push(if c.is_control() || bidi {
            '\u{fffd}'
        } else {
            c
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_text_is_bounded_and_has_no_control_characters() {
        let evil = b"ok\x1b[2J\x1b]0;owned\x07\r\nfake log line\xff\xe2\x80\xae";
        let t = peer_text(evil);
        assert!(
            !t.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{t:?}"
        );
        assert!(t.starts_with("ok\u{fffd}[2J"), "{t:?}");
        let long = vec![b'a'; 100_000];
        let t = peer_text(&long);
        assert_eq!(t.chars().count(), PEER_TEXT_MAX + 1);
        assert!(t.ends_with('…'));
        assert_eq!(
            peer_text("the helper gives up: x".as_bytes()),
            "the helper gives up: x"
        );
    }
}
