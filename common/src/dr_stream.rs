//! One DR stream's frames over any byte stream (a QUIC stream in the
//! daemons), for both ends: frames in, frames out, the codec in
//! `tether_proto::dr::wire`.

use bytes::BytesMut;
use tether_proto::dr::wire::{decode_dr_frame, encode_dr_frame, DrFrame, MAX_DR_PAYLOAD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a DR stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum DrStreamError {
    #[error("the peer closed the stream")]
    Closed,
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer broke the protocol: {0}")]
    Protocol(#[from] tether_proto::ProtoError),
}

pub struct DrStream<R, W> {
    recv: R,
    send: W,
    input: BytesMut,
    output: BytesMut,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> DrStream<R, W> {
    pub fn new(recv: R, send: W) -> Self {
        Self {
            recv,
            send,
            input: BytesMut::with_capacity(64 << 10),
            output: BytesMut::new(),
        }
    }

    /// Queues `frame`; [`flush`](Self::flush) sends what is queued.
    pub fn queue(&mut self, frame: &DrFrame) {
        encode_dr_frame(frame, &mut self.output);
    }

    pub async fn flush(&mut self) -> Result<(), DrStreamError> {
        if !self.output.is_empty() {
            self.send.write_all(&self.output).await?;
            self.output.clear();
        }
        self.send.flush().await?;
        Ok(())
    }

    /// Queues and sends, once more than 1 MiB is queued (or at once).
    pub async fn send(&mut self, frame: &DrFrame) -> Result<(), DrStreamError> {
        self.queue(frame);
        if self.output.len() >= 1 << 20 {
            self.flush().await?;
        }
        Ok(())
    }

    /// The next frame. At most one frame's bound (`MAX_DR_PAYLOAD`) is held.
    pub async fn recv(&mut self) -> Result<DrFrame, DrStreamError> {
        loop {
            if let Some(frame) = decode_dr_frame(&mut self.input)? {
                return Ok(frame);
            }
            if self.input.capacity() - self.input.len() < 16 << 10 {
                let want = (MAX_DR_PAYLOAD as usize + 64).min(self.input.len() + (256 << 10));
                self.input.reserve(want - self.input.len().min(want));
            }
            if self.recv.read_buf(&mut self.input).await? == 0 {
                return Err(DrStreamError::Closed);
            }
        }
    }

    /// Ends the sending side.
    pub async fn finish(&mut self) -> Result<(), DrStreamError> {
        self.flush().await?;
        self.send.shutdown().await?;
        Ok(())
    }
}
