use std::sync::Arc;

/// Mutual TLS for block streams: the holder's certificate (renewals swap it
/// underneath) and the server and client configs built on it once.
#[derive(Clone)]
pub struct BlockTls {
    pub context: Arc<tether_tls::TlsContext>,
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl BlockTls {
    pub fn new(context: Arc<tether_tls::TlsContext>) -> Self {
        Self {
            server: context.server_config(tether_tls::ClientAuth::Required),
            client: context.client_config(),
            context,
        }
    }
}
