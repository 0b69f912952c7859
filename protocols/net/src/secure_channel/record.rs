//! The records of a secure channel: `len: u16 BE | ciphertext`, at most 65 535 bytes (the
//! Noise limit), with implicit nonces counting up per direction, so that a dropped, replayed or
//! reordered record fails authentication; also the plaintext records of the handshake.

use crate::error::{NetError, Result};
use knapsec_core::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub(super) const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext bytes per record.
pub(super) const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Encrypted bytes buffered before a write.
pub(super) const WRITE_BATCH: usize = 256 * 1024;

pub(super) async fn write_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(2 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    buf.extend_from_slice(bytes);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one record into `buf` (resized to its length).
pub(super) async fn read_record<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    buf.resize(u16::from_be_bytes(len) as usize, 0);
    r.read_exact(buf).await?;
    Ok(())
}

/// Encrypts `plain` as records appended to `out`.
pub(super) fn seal_records(
    noise: &snow::StatelessTransportState,
    nonce: &mut u64,
    plain: &[u8],
    out: &mut Vec<u8>,
    peer: Role,
) -> Result<()> {
    for chunk in plain.chunks(MAX_PLAIN) {
        let start = out.len();
        out.resize(start + 2 + chunk.len() + TAG_LEN, 0);
        let n = noise
            .write_message(*nonce, chunk, &mut out[start + 2..])
            .map_err(|e| NetError::Handshake {
                peer,
                message: format!("encryption failed: {e}"),
            })?;
        *nonce += 1;
        out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
        out.truncate(start + 2 + n);
    }
    Ok(())
}

/// Decrypts one record into `plain`; returns the plaintext length.
pub(super) fn open_record(
    noise: &snow::StatelessTransportState,
    nonce: &mut u64,
    rec: &[u8],
    plain: &mut [u8],
    peer: Role,
) -> Result<usize> {
    let n = noise.read_message(*nonce, rec, plain).map_err(|_| {
        NetError::MalformedFrame(format!(
            "a record from the {peer} failed authentication (corrupted or forged data)"
        ))
    })?;
    *nonce += 1;
    Ok(n)
}
