//! The registry's admin API over gRPC, beside its JSON API: the same
//! operations, the same roles, the same answers. The service is
//! `tether.admin.v1.Admin` (`protos/tether/admin/v1/admin.proto`); its
//! messages carry the JSON shapes' field names, so [`convert`] moves a value
//! between a JSON shape of `tether-proto` and its message.
//!
//! Read first: the `.proto`, then [`connect`].

mod error;

use std::sync::Arc;
use std::time::Duration;

pub use error::GrpcError;

/// The generated messages, server and client.
pub mod pb {
    tonic::include_proto!("tether.admin.v1");
}

/// The admin service's client over a mutual-TLS channel.
pub type Client = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// How long dialing the registry may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the admin API at `registry` (`https://HOST:PORT`, the same
/// address as the JSON API), with this process's certificate. Connects
/// lazily: the first call dials, and a broken connection is dialed again.
pub fn connect(registry: &str, tls: Arc<tether_tls::TlsContext>) -> Result<Client, GrpcError> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(registry.to_string()).map_err(|err| {
            GrpcError::Address {
                address: registry.to_string(),
                reason: err.to_string(),
            }
        })?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(tether_tls::h2::connector(tls, 7480));
    Ok(pb::admin_client::AdminClient::new(channel))
}

/// Moves a value between a JSON shape and its message (either way): the
/// same field names, through serde. `what` names the shape in the error.
pub fn convert<From, To>(what: &'static str, value: &From) -> Result<To, GrpcError>
where
    From: serde::Serialize,
    To: serde::de::DeserializeOwned,
{
    let json = serde_json::to_value(value).map_err(|err| GrpcError::Shape {
        what,
        reason: err.to_string(),
    })?;
    serde_json::from_value(json).map_err(|err| GrpcError::Shape {
        what,
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests;
