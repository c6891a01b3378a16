//! The registry calling a node's control RPCs (mutual TLS, checking the
//! server's certificate names that node). Used for the one thing that must
//! not pass through the store: an encrypted volume's data key.

use std::net::SocketAddr;
use std::time::Duration;

use tether_proto::admin::{ErrorBody, NodeRecord, VolumeKey};
use tether_tls::{Identity, Role};

use crate::security::Security;
use crate::RegistryError;

/// Hands `data_key` (hex, already checked) to `node` for `volume`.
pub async fn load_key(
    security: &Security,
    node: &NodeRecord,
    volume: &str,
    data_key: String,
) -> Result<(), RegistryError> {
    let body = serde_json::to_value(VolumeKey { data_key }).expect("serializes");
    call(
        security,
        node,
        "PUT",
        &format!("/v1/volumes/{volume}/key"),
        Some(body),
        volume,
    )
    .await
}

/// Asks `node` to forget `volume`'s data key.
pub async fn drop_key(
    security: &Security,
    node: &NodeRecord,
    volume: &str,
) -> Result<(), RegistryError> {
    call(
        security,
        node,
        "DELETE",
        &format!("/v1/volumes/{volume}/key"),
        None,
        volume,
    )
    .await
}

async fn call(
    security: &Security,
    node: &NodeRecord,
    method: &'static str,
    path: &str,
    body: Option<serde_json::Value>,
    volume: &str,
) -> Result<(), RegistryError> {
    let (volume, node_name) = (volume.to_string(), node.name.clone());
    let failed = move |reason: String| RegistryError::NodeFailed {
        name: volume.clone(),
        node: node_name.clone(),
        reason,
    };
    let addr: SocketAddr = node
        .control_addr
        .as_deref()
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| failed("the node registered no control address".into()))?;
    // The URL names the node's certificate; the resolver sends it to the registered address.
    let server = Identity::new(&security.cluster, Role::Node, &node.name);
    let url = format!("https://{}:{}{path}", server.dns_name(), addr.port());
    let tls = security.tls.client_config();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls)
            .resolver(move |_: &str| Ok(vec![addr]))
            .timeout(Duration::from_secs(10))
            .build();
        let request = agent.request(method, &url);
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match result {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let reason = serde_json::from_str::<ErrorBody>(&text)
                    .map(|error| error.error)
                    .unwrap_or(text);
                Err(failed(format!("{status}: {reason}")))
            }
            Err(ureq::Error::Transport(err)) => Err(failed(format!("control RPC: {err}"))),
        }
    })
    .await
    .expect("the request thread does not panic")
}
