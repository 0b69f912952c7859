//! Message framing inside an authenticated channel (digest §6.15, done better: binary
//! length prefixes, no per-message acknowledgement, a maximum size).
//!
//! A channel carries a stream of frames, each `kind: u8 | len: u32 LE | payload`. The
//! [`FrameDecoder`] is incremental: bytes arrive in arbitrary pieces (the decrypted Noise
//! records of [`crate::secure_channel`]), complete frames come out. A frame whose declared
//! length exceeds the configured maximum, or with an unknown kind, is rejected before its
//! payload is read; payload buffers grow with the bytes actually received, so a lying length
//! prefix cannot make the receiver allocate memory it never gets data for.

use crate::error::NetError;

/// Bytes of a frame header: kind (1) + length (4).
pub const HEADER_LEN: usize = 5;

/// Default maximum payload of one frame: 1 GiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// Largest chunk reserved ahead of the data actually received.
const RESERVE_STEP: usize = 1 << 20;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A protocol message.
    Data = 0,
    /// The sender aborts the session; the payload is its reason (UTF-8).
    Abort = 1,
    /// The sender closes the channel cleanly; no payload.
    Goodbye = 2,
    /// The sender is alive; no payload. An idle connection sends one now and then, so that a
    /// peer's silence means a dead party or link, not a party busy or waiting for another.
    Alive = 3,
}

impl FrameKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(FrameKind::Data),
            1 => Some(FrameKind::Abort),
            2 => Some(FrameKind::Goodbye),
            3 => Some(FrameKind::Alive),
            _ => None,
        }
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the frame carries.
    pub kind: FrameKind,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Appends the encoding of a frame (`kind | len | payload`) to `out`.
///
/// # Errors
/// [`NetError::FrameTooLarge`] if `payload` exceeds `max` (or `u32::MAX`).
pub fn encode_frame(
    kind: FrameKind,
    payload: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> Result<(), NetError> {
    if payload.len() > max || payload.len() > u32::MAX as usize {
        return Err(NetError::FrameTooLarge {
            size: payload.len(),
            max: max.min(u32::MAX as usize),
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Header bytes of a frame, for writers that send the payload without copying it.
pub fn frame_header(kind: FrameKind, len: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind as u8;
    h[1..].copy_from_slice(&(len as u32).to_le_bytes());
    h
}

enum State {
    Header {
        buf: [u8; HEADER_LEN],
        have: usize,
    },
    Payload {
        kind: FrameKind,
        len: usize,
        buf: Vec<u8>,
    },
}

/// Incremental frame decoder with a maximum payload size.
pub struct FrameDecoder {
    max: usize,
    state: State,
    /// Set after the first error: the stream is out of sync and nothing more is decoded.
    poisoned: bool,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("max", &self.max)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl FrameDecoder {
    /// A decoder refusing payloads larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            max,
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
            poisoned: false,
        }
    }

    /// True if no partial frame is buffered (a clean place for the stream to end).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Feeds `bytes`; calls `emit` for every frame completed by them, in order.
    ///
    /// # Errors
    /// [`NetError::FrameTooLarge`] or [`NetError::UnknownFrameKind`]; after an error the decoder
    /// refuses all further input with [`NetError::DecoderPoisoned`].
    pub fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(Frame)) -> Result<(), NetError> {
        if self.poisoned {
            return Err(NetError::DecoderPoisoned);
        }
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { buf, have } => {
                    let take = (HEADER_LEN - *have).min(bytes.len());
                    buf[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have < HEADER_LEN {
                        continue;
                    }
                    let Some(kind) = FrameKind::from_byte(buf[0]) else {
                        self.poisoned = true;
                        return Err(NetError::UnknownFrameKind(buf[0]));
                    };
                    let len = u32::from_le_bytes(buf[1..].try_into().expect("4 bytes")) as usize;
                    if len > self.max {
                        self.poisoned = true;
                        return Err(NetError::FrameTooLarge {
                            size: len,
                            max: self.max,
                        });
                    }
                    if matches!(kind, FrameKind::Goodbye | FrameKind::Alive) && len != 0 {
                        self.poisoned = true;
                        return Err(NetError::MalformedFrame(format!(
                            "a {} frame carries no payload",
                            if kind == FrameKind::Goodbye {
                                "goodbye"
                            } else {
                                "keep-alive"
                            }
                        )));
                    }
                    if len == 0 {
                        self.state = State::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        };
                        emit(Frame {
                            kind,
                            payload: Vec::new(),
                        });
                    } else {
                        let buf = Vec::with_capacity(len.min(RESERVE_STEP));
                        self.state = State::Payload { kind, len, buf };
                    }
                }
                State::Payload { kind, len, buf } => {
                    let take = (*len - buf.len()).min(bytes.len());
                    buf.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if buf.len() == *len {
                        let kind = *kind;
                        let payload = std::mem::take(buf);
                        self.state = State::Header {
                            buf: [0; HEADER_LEN],
                            have: 0,
                        };
                        emit(Frame { kind, payload });
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(max: usize, stream: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, NetError> {
        let mut dec = FrameDecoder::new(max);
        let mut out = Vec::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            let c = c.clamp(start, stream.len());
            dec.feed(&stream[start..c], |f| out.push(f))?;
            start = c;
        }
        Ok(out)
    }

    #[test]
    fn rejects_oversized_and_unknown_kinds() {
        let mut s = Vec::new();
        encode_frame(FrameKind::Data, &[7; 100], 1000, &mut s).unwrap();
        assert!(matches!(
            decode_all(99, &s, &[]),
            Err(NetError::FrameTooLarge { size: 100, max: 99 })
        ));
        assert!(matches!(
            encode_frame(FrameKind::Data, &[0; 10], 9, &mut Vec::new()),
            Err(NetError::FrameTooLarge { size: 10, max: 9 })
        ));
        let mut dec = FrameDecoder::new(10);
        assert!(matches!(
            dec.feed(&[9, 0, 0, 0, 0], |_| ()),
            Err(NetError::UnknownFrameKind(9))
        ));
        assert!(matches!(
            dec.feed(&[0], |_| ()),
            Err(NetError::DecoderPoisoned)
        ));
        assert!(decode_all(10, &[2, 1, 0, 0, 0, 5], &[]).is_err());
        assert!(decode_all(10, &[3, 1, 0, 0, 0, 5], &[]).is_err());
    }

    #[test]
    fn keep_alive_frames_round_trip_empty() {
        let mut s = Vec::new();
        encode_frame(FrameKind::Alive, &[], 10, &mut s).unwrap();
        assert_eq!(s, [3, 0, 0, 0, 0]);
        let mut got = Vec::new();
        FrameDecoder::new(10).feed(&s, |f| got.push(f)).unwrap();
        assert_eq!(
            got,
            [Frame {
                kind: FrameKind::Alive,
                payload: Vec::new()
            }]
        );
    }

    #[test]
    fn partial_frame_is_not_idle() {
        let mut dec = FrameDecoder::new(10);
        dec.feed(&[0, 3, 0, 0, 0, 1], |_| panic!("incomplete"))
            .unwrap();
        assert!(!dec.is_idle());
        let mut got = Vec::new();
        dec.feed(&[2, 3], |f| got.push(f)).unwrap();
        assert_eq!(
            got,
            vec![Frame {
                kind: FrameKind::Data,
                payload: vec![1, 2, 3]
            }]
        );
        assert!(dec.is_idle());
    }

    proptest! {
        /// Any sequence of frames, cut into any pieces, decodes to itself.
        #[test]
        fn round_trip(frames in prop::collection::vec((0u8..3, prop::collection::vec(any::<u8>(), 0..300)), 0..8),
                      cuts in prop::collection::vec(0usize..3000, 0..10)) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (k, p) in frames {
                let kind = FrameKind::from_byte(k).unwrap();
                let p = if kind == FrameKind::Goodbye { Vec::new() } else { p };
                encode_frame(kind, &p, 300, &mut stream).unwrap();
                want.push(Frame { kind, payload: p });
            }
            let mut cuts = cuts;
            cuts.sort();
            prop_assert_eq!(decode_all(300, &stream, &cuts).unwrap(), want);
        }

        /// Arbitrary bytes never panic, and every frame that comes out respects the maximum.
        #[test]
        fn arbitrary_bytes(stream in prop::collection::vec(any::<u8>(), 0..2000), max in 0usize..600) {
            let mut dec = FrameDecoder::new(max);
            let mut frames = Vec::new();
            let res = dec.feed(&stream, |f| frames.push(f));
            for f in &frames {
                prop_assert!(f.payload.len() <= max);
            }
            if let Err(e) = res {
                let known = matches!(e, NetError::FrameTooLarge { .. } | NetError::UnknownFrameKind(_) | NetError::MalformedFrame(_));
                prop_assert!(known, "unexpected error {}", e);
            }
        }
    }
}
