//! DR peers, as both front ends serve them: add, accept (the open call a
//! linking peer makes with its token), link, list, and this cluster's CA.

use std::time::Duration;

use tether_proto::dr::{
    AcceptPeerRequest, AcceptPeerResponse, AddPeerRequest, AddPeerResponse, CaCertificate,
    LinkPeerRequest, PeerView,
};

use super::{ApiResult, AppState};

/// How long a peer's link token lives unless asked otherwise.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

fn own_ca(state: &AppState) -> String {
    state.security.ca.trust_pem().to_string()
}

pub(crate) async fn add_peer(
    state: AppState,
    request: AddPeerRequest,
) -> ApiResult<AddPeerResponse> {
    let ttl = request
        .ttl_seconds
        .map_or(DEFAULT_TTL, Duration::from_secs)
        .min(crate::join_tokens::MAX_TTL);
    crate::peers::add(
        state.store.as_ref(),
        &state.cluster,
        &own_ca(&state),
        &request.name,
        ttl,
    )
    .await
}

pub(crate) async fn accept_peer(
    state: AppState,
    request: AcceptPeerRequest,
) -> ApiResult<AcceptPeerResponse> {
    crate::peers::accept(
        state.store.as_ref(),
        &state.cluster,
        &own_ca(&state),
        &request,
    )
    .await?;
    Ok(AcceptPeerResponse {
        name: state.cluster.clone(),
        ca_pem: own_ca(&state),
        gateways: crate::peers::own_gateways(state.store.as_ref(), &state.cluster).await?,
    })
}

pub(crate) async fn link_peer(
    state: AppState,
    name: String,
    request: LinkPeerRequest,
) -> ApiResult<PeerView> {
    crate::peers::link(
        state.store.as_ref(),
        &state.cluster,
        &own_ca(&state),
        &name,
        &request,
    )
    .await
}

pub(crate) async fn list_peers(state: AppState) -> ApiResult<Vec<PeerView>> {
    crate::peers::list(state.store.as_ref(), &state.cluster).await
}

pub(crate) fn ca_certificate(state: &AppState) -> CaCertificate {
    CaCertificate {
        ca_pem: own_ca(state),
    }
}
