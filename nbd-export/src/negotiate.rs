//! The NBD handshake on a socket: `tether_proto::nbd`'s state machine driven
//! over the stream, upgraded in place to TLS when the client sends STARTTLS.
//!
//! Under TLS the client must present a certificate from the cluster's CA
//! with the `client` role (`tether ca issue --role client`): TLS here is
//! mutual, as on every other Tether endpoint, not only encryption.

use std::sync::Arc;

use bytes::BytesMut;
use tether_proto::nbd::{ExportCatalog, ExportInfo, HandshakeOutcome, ServerHandshake, TlsMode};
use tether_tls::{ClientAuth, Identity, Role, TlsContext};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::server::ConnectionError;

/// What a node's NBD listeners need to speak TLS.
pub struct NbdTls {
    /// Client certificates required; no ALPN (NBD clients send none).
    config: Arc<rustls::ServerConfig>,
    cluster: String,
}

impl NbdTls {
    pub fn new(context: &Arc<TlsContext>) -> Self {
        Self {
            config: context.server_config_with_alpn(ClientAuth::Required, Vec::new()),
            cluster: context.identity().cluster.clone(),
        }
    }

    /// Runs the TLS handshake and checks who the client is.
    async fn accept<S>(
        &self,
        stream: S,
    ) -> Result<(tokio_rustls::server::TlsStream<S>, Identity), ConnectionError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let tls = tokio_rustls::TlsAcceptor::from(self.config.clone())
            .accept(stream)
            .await
            .map_err(|err| ConnectionError::Refused(format!("TLS handshake failed: {err}")))?;
        let identity = tether_tls::peer_identity(tls.get_ref().1.peer_certificates())
            .map_err(|err| ConnectionError::Refused(err.to_string()))?
            .ok_or_else(|| ConnectionError::Refused("no client certificate".into()))?;
        if identity.cluster != self.cluster || identity.role != Role::Client {
            return Err(ConnectionError::Refused(format!(
                "{} may not use volumes over NBD (want tether://{}/client/NAME)",
                identity.uri(),
                self.cluster
            )));
        }
        Ok((tls, identity))
    }
}

/// A connection through the handshake, in plaintext or under TLS.
pub enum Negotiated<S> {
    Plain(S),
    Tls {
        stream: Box<tokio_rustls::server::TlsStream<S>>,
        client: Identity,
    },
}

/// Haggles until transmission starts (`Some`) or the client leaves
/// (`None`). Bytes the client sent past the handshake stay in `input`.
pub async fn negotiate<S, C>(
    mut stream: S,
    catalog: &C,
    mode: TlsMode,
    tls: &NbdTls,
    input: &mut BytesMut,
) -> Result<Option<(Negotiated<S>, ExportInfo)>, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: ExportCatalog + Sync,
{
    let mut handshake = ServerHandshake::with_tls(mode);
    match haggle(&mut stream, &mut handshake, catalog, input).await? {
        HandshakeOutcome::Transmission(export) => {
            return Ok(Some((Negotiated::Plain(stream), export)))
        }
        HandshakeOutcome::Closed { reason } => {
            tracing::info!(%reason, "handshake ended without transmission");
            return Ok(None);
        }
        HandshakeOutcome::StartTls => {}
    }
    let (mut stream, client) = tls.accept(stream).await?;
    tracing::debug!(client = %client, "TLS up");
    match haggle(&mut stream, &mut handshake, catalog, input).await? {
        HandshakeOutcome::Transmission(export) => Ok(Some((
            Negotiated::Tls {
                stream: Box::new(stream),
                client,
            },
            export,
        ))),
        HandshakeOutcome::Closed { reason } => {
            tracing::info!(%reason, "handshake ended without transmission");
            Ok(None)
        }
        // The state machine acknowledges STARTTLS once; a second is refused.
        HandshakeOutcome::StartTls => unreachable!("STARTTLS acknowledged twice"),
    }
}

/// Feeds the state machine until it ends or asks for TLS, sending its replies
/// (the greeting first) as they come.
async fn haggle<T, C>(
    stream: &mut T,
    handshake: &mut ServerHandshake,
    catalog: &C,
    input: &mut BytesMut,
) -> Result<HandshakeOutcome, ConnectionError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    C: ExportCatalog + Sync,
{
    loop {
        let outcome = handshake.handle_input(input, catalog)?;
        if let Some(out) = handshake.poll_transmit() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        if let Some(outcome) = outcome {
            return Ok(outcome);
        }
        if stream.read_buf(input).await? == 0 {
            return Ok(HandshakeOutcome::Closed {
                reason: "the client closed the connection".into(),
            });
        }
    }
}
