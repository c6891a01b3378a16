//! Speaking the federation link protocol badly on purpose: a QUIC client
//! with a satellite's certificate that opens a stream, says Hello, and then
//! sends what no link client would (garbage, an oversized frame, an answer
//! frame, a second Hello), to check the gateway ends that session and only it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tether_proto::link::{encode_link_frame, LinkFrame, LINK_ALPN, LINK_MAGIC};
use tether_tls::{Credentials, TlsContext};

/// A QUIC client endpoint presenting the credential in `credentials`.
pub fn endpoint(credentials: &Path) -> anyhow::Result<quinn::Endpoint> {
    let tls = TlsContext::new(&Credentials::load(credentials)?)?;
    let rustls = tls.client_config_with_alpn(vec![LINK_ALPN.to_vec()]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls)?;
    let mut quic = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    quic.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    Ok(quic)
}

fn encoded(frame: &LinkFrame) -> BytesMut {
    let mut out = BytesMut::new();
    encode_link_frame(frame, &mut out);
    out
}

/// The Hello that opens `volume`.
pub fn hello(volume: &str) -> BytesMut {
    encoded(&LinkFrame::Hello {
        min_version: 1,
        max_version: 1,
        features: 0,
        volume: volume.into(),
    })
}

/// What may not follow a Hello, each named.
pub fn violations(volume: &str) -> Vec<(&'static str, BytesMut)> {
    let mut oversized = BytesMut::new();
    oversized.extend_from_slice(&LINK_MAGIC.to_be_bytes());
    oversized.extend_from_slice(&[1, 5, 0, 0]);
    oversized.extend_from_slice(&7u64.to_be_bytes());
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    vec![
        (
            "garbage",
            BytesMut::from(&b"this is not a frame at all, no"[..]),
        ),
        ("an oversized frame", oversized),
        (
            "an answer frame",
            encoded(&LinkFrame::Done { id: 1, error: 0 }),
        ),
        ("a second Hello", hello(volume)),
    ]
}

/// Opens `volume` through the gateway at `gateway`, sends `after_hello`,
/// and returns the code the gateway closed the session with (an error if
/// it did not close it within 10 s).
pub async fn close_code_after(
    quic: &quinn::Endpoint,
    gateway: &str,
    volume: &str,
    after_hello: &[u8],
) -> anyhow::Result<u32> {
    let connection = quic.connect(gateway.parse()?, "127.0.0.1")?.await?;
    let (mut send, _recv) = connection.open_bi().await?;
    send.write_all(&hello(volume)).await?;
    send.write_all(after_hello).await?;
    match tokio::time::timeout(Duration::from_secs(10), connection.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
            Ok(close.error_code.into_inner() as u32)
        }
        other => anyhow::bail!("the session was not ended: {other:?}"),
    }
}
