//! The two directions of a [`SecureChannel`](super::SecureChannel) once it is split: a reader
//! that decrypts records into frames (and notes when the peer was last heard), and a writer that
//! coalesces frames into records and writes them in batches.

use super::record::{MAX_PLAIN, WRITE_BATCH, open_record, seal_records};
use super::{debug_peer, io_error};
use crate::error::{NetError, Result};
use crate::frame::{self, Frame, FrameDecoder, FrameKind};
use knapsec_core::Role;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The receiving half of a [`SecureChannel`].
pub struct ChannelReader {
    pub(super) peer: Role,
    pub(super) inner: BufReader<OwnedReadHalf>,
    pub(super) noise: Arc<snow::StatelessTransportState>,
    pub(super) nonce: u64,
    pub(super) decoder: FrameDecoder,
    pub(super) pending: std::collections::VecDeque<Frame>,
    pub(super) rec: Vec<u8>,
    pub(super) plain: Vec<u8>,
    pub(super) heard: Option<Arc<LastHeard>>,
}

/// When a connection last delivered a record (any bytes at all) from its peer: the liveness
/// of the peer and the link, shared between a reader and whoever waits on it.
#[derive(Debug)]
pub struct LastHeard {
    epoch: std::time::Instant,
    millis: std::sync::atomic::AtomicU64,
}

impl LastHeard {
    /// Starts as heard now.
    pub fn now() -> Self {
        LastHeard {
            epoch: std::time::Instant::now(),
            millis: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Notes that the peer was heard now.
    pub fn mark(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.millis
            .fetch_max(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// When the peer was last heard.
    pub fn at(&self) -> std::time::Instant {
        self.epoch
            + std::time::Duration::from_millis(
                self.millis.load(std::sync::atomic::Ordering::Relaxed),
            )
    }
}

impl std::fmt::Debug for ChannelReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_peer(f, "ChannelReader", self.peer)
    }
}

impl ChannelReader {
    /// Marks `heard` whenever a record arrives (also in the middle of a long frame).
    pub fn watch(&mut self, heard: Arc<LastHeard>) {
        self.heard = Some(heard);
    }

    /// The next frame, or `None` when the peer closed the connection between frames.
    ///
    /// # Errors
    /// A socket error, a record failing authentication, an invalid frame, or a connection
    /// closed in the middle of a frame.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            let mut len = [0u8; 2];
            match self.inner.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::UnexpectedEof && self.decoder.is_idle() =>
                {
                    return Ok(None);
                }
                Err(source) => {
                    return Err(io_error(self.peer)(source));
                }
            }
            self.rec.resize(u16::from_be_bytes(len) as usize, 0);
            self.inner
                .read_exact(&mut self.rec)
                .await
                .map_err(io_error(self.peer))?;
            let n = open_record(
                &self.noise,
                &mut self.nonce,
                &self.rec,
                &mut self.plain,
                self.peer,
            )?;
            if let Some(h) = &self.heard {
                h.mark();
            }
            let pending = &mut self.pending;
            self.decoder
                .feed(&self.plain[..n], |f| pending.push_back(f))?;
        }
    }
}

/// The sending half of a [`SecureChannel`]. Frames are coalesced into records and written
/// in batches; [`ChannelWriter::flush`] pushes everything out.
pub struct ChannelWriter {
    pub(super) peer: Role,
    pub(super) inner: OwnedWriteHalf,
    pub(super) noise: Arc<snow::StatelessTransportState>,
    pub(super) nonce: u64,
    pub(super) plain: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) max_frame: usize,
}

impl std::fmt::Debug for ChannelWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_peer(f, "ChannelWriter", self.peer)
    }
}

impl ChannelWriter {
    /// Queues one frame; writes to the socket whenever a batch is full.
    ///
    /// # Errors
    /// If the frame exceeds the maximum or the socket fails.
    pub async fn write_frame(&mut self, kind: FrameKind, payload: &[u8]) -> Result<()> {
        if payload.len() > self.max_frame || payload.len() > u32::MAX as usize {
            return Err(NetError::FrameTooLarge {
                size: payload.len(),
                max: self.max_frame,
            });
        }
        self.push(&frame::frame_header(kind, payload.len())).await?;
        self.push(payload).await
    }

    async fn push(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let take = (MAX_PLAIN - self.plain.len()).min(bytes.len());
            self.plain.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.plain.len() == MAX_PLAIN {
                self.seal()?;
                if self.out.len() >= WRITE_BATCH {
                    self.write_out().await?;
                }
            }
        }
        Ok(())
    }

    fn seal(&mut self) -> Result<()> {
        if !self.plain.is_empty() {
            seal_records(
                &self.noise,
                &mut self.nonce,
                &self.plain,
                &mut self.out,
                self.peer,
            )?;
            self.plain.clear();
        }
        Ok(())
    }

    async fn write_out(&mut self) -> Result<()> {
        self.inner
            .write_all(&self.out)
            .await
            .map_err(io_error(self.peer))?;
        self.out.clear();
        Ok(())
    }

    /// Seals the partial record and writes everything buffered.
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn flush(&mut self) -> Result<()> {
        self.seal()?;
        self.write_out().await
    }

    /// Flushes and closes the sending direction (the peer reads end-of-stream).
    ///
    /// # Errors
    /// If the socket fails.
    pub async fn shutdown(&mut self) -> Result<()> {
        self.flush().await?;
        self.inner.shutdown().await.map_err(io_error(self.peer))
    }
}
