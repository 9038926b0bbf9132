//! Framing of one request or response on a QUIC stream: a one-byte tag (request kind or
//! response status), a big-endian u32 length, then the payload. The stream carries one
//! frame each way and is finished after it.

use quinn::{RecvStream, SendStream};

/// Length of the tag and length prefix.
pub(crate) const HEADER_LEN: usize = 5;

/// The status byte of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Status {
    /// The handler answered; the payload is its answer.
    Ok = 0,
    /// The handler failed; the payload is its message.
    RemoteError = 1,
    /// The transport refused the request; the payload is the reason.
    Refused = 2,
}

impl Status {
    pub(crate) fn from_u8(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::RemoteError,
            2 => Status::Refused,
            _ => return None,
        })
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The stream or connection failed.
    #[error("{0}")]
    Stream(String),
    /// The announced payload is larger than allowed; nothing of it was read.
    #[error("payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}

/// Reads the tag and announced length.
pub(crate) async fn read_header(recv: &mut RecvStream) -> Result<(u8, usize), ReadFrameError> {
    let mut header = [0u8; HEADER_LEN];
    recv.read_exact(&mut header)
        .await
        .map_err(|e| ReadFrameError::Stream(e.to_string()))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    // u32 always fits usize on the 32- and 64-bit targets this builds for.
    Ok((header[0], len as usize))
}

/// Reads a payload of exactly `len` bytes, refusing it without reading when over `limit`.
pub(crate) async fn read_payload(
    recv: &mut RecvStream,
    len: usize,
    limit: usize,
) -> Result<Vec<u8>, ReadFrameError> {
    if len > limit {
        return Err(ReadFrameError::TooLarge { len, limit });
    }
    // read_to_end grows the buffer as data arrives, so a peer announcing a large payload
    // and sending nothing costs no memory; it also fails on bytes past the frame.
    let payload = recv
        .read_to_end(len)
        .await
        .map_err(|e| ReadFrameError::Stream(e.to_string()))?;
    if payload.len() != len {
        return Err(ReadFrameError::Stream(format!(
            "stream finished after {} of {len} bytes",
            payload.len()
        )));
    }
    Ok(payload)
}

/// Writes one frame; the caller finishes the stream.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    tag: u8,
    payload: &[u8],
) -> Result<(), quinn::WriteError> {
    // Callers bound payloads far below 4 GiB; saturating keeps this total anyway, and the
    // peer then sees a short frame instead of a wrapped length.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let [a, b, c, d] = len.to_be_bytes();
    send.write_all(&[tag, a, b, c, d]).await?;
    send.write_all(payload).await
}
