//! One connection of a session, from the party's side: connecting with retries, deadlines per
//! phase, the hello exchange and its check, the pair key, waiting for the peer's ready message,
//! and telling a peer why this party gives up.

use crate::handshake::{self, Control, Hello};
use knapsec_core::Role;
use knapsec_net::error::{NetError, Result, peer_text};
use knapsec_net::frame::FrameKind;
use knapsec_net::secure_channel::SecureChannel;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// The session key this party shares with each peer.
pub(super) type PairKeys = Vec<(Role, [u8; 32])>;

/// One established connection: the channel, both hellos, and the pair key.
pub(super) struct Established {
    pub(super) channel: SecureChannel,
    pub(super) peer_hello: Hello,
    pub(super) pair_key: [u8; 32],
}

pub(super) fn timeout_err(peer: Role, phase: &'static str, d: Duration) -> NetError {
    NetError::Timeout {
        peer,
        phase,
        seconds: d.as_secs(),
    }
}

pub(super) async fn within<T>(
    d: Duration,
    peer: Role,
    phase: &'static str,
    f: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| timeout_err(peer, phase, d))?
}

/// Connects to `address`, retrying every 100 ms until `deadline` has passed.
pub(super) async fn connect_retry(
    peer: Role,
    address: &str,
    deadline: Duration,
) -> Result<TcpStream> {
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let attempt = tokio::time::timeout(
            left.max(Duration::from_millis(1)),
            TcpStream::connect(address),
        )
        .await;
        let last = match attempt {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if start.elapsed() >= deadline {
            return Err(NetError::Connect {
                peer,
                address: address.to_string(),
                seconds: deadline.as_secs(),
                last,
            });
        }
        tokio::time::sleep(
            Duration::from_millis(100).min(deadline.saturating_sub(start.elapsed())),
        )
        .await;
    }
}

/// Receives the peer's hello (or its abort).
pub(super) async fn recv_hello(ch: &mut SecureChannel) -> Result<Hello> {
    let peer = ch.peer();
    let f = ch.recv_frame().await?;
    match f.kind {
        FrameKind::Data => Hello::from_bytes(&f.payload, peer),
        FrameKind::Abort => Err(NetError::Aborted {
            peer,
            reason: peer_text(&f.payload),
        }),
        FrameKind::Goodbye => Err(NetError::Protocol {
            peer,
            message: "it closed before its hello".into(),
        }),
        // `recv_frame` passes no keep-alives on.
        FrameKind::Alive => Err(NetError::Protocol {
            peer,
            message: "a keep-alive before its hello".into(),
        }),
    }
}

/// Waits (at most `wait`) for the peer's [`Control::Ready`], or its abort.
pub(super) async fn wait_ready(ch: &mut SecureChannel, wait: Duration) -> Result<()> {
    let peer = ch.peer();
    let f = tokio::time::timeout(wait, ch.recv_frame())
        .await
        .map_err(|_| timeout_err(peer, "the start of the session", wait))??;
    match f.kind {
        FrameKind::Data if Control::from_bytes(&f.payload, peer)? == Control::Ready => Ok(()),
        FrameKind::Abort => Err(NetError::Aborted {
            peer,
            reason: peer_text(&f.payload),
        }),
        _ => Err(NetError::Protocol {
            peer,
            message: "expected its ready message".into(),
        }),
    }
}

/// Best effort: tells the peer of `ch` why this party gives up.
pub(super) async fn abort_channel(ch: &mut SecureChannel, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        ch.send_frame(FrameKind::Abort, reason.as_bytes()),
    )
    .await;
}

/// Ends the hello exchange of a connection this party initiated (`initiated`) or answered:
/// checks the peer's hello `theirs` against `mine` (telling the peer why on a mismatch) and
/// derives the pair key.
pub(super) async fn settle(
    mut channel: SecureChannel,
    me: Role,
    mine: &Hello,
    theirs: Hello,
    initiated: bool,
) -> Result<Established> {
    let peer = channel.peer();
    if let Err(e) = mine.check(&theirs, peer) {
        abort_channel(&mut channel, &e.to_string()).await;
        return Err(e);
    }
    let hash = channel.handshake_hash();
    let pair_key = if initiated {
        handshake::pair_key(me, peer, hash, mine, &theirs)
    } else {
        handshake::pair_key(peer, me, hash, &theirs, mine)
    };
    Ok(Established {
        channel,
        peer_hello: theirs,
        pair_key,
    })
}
