//! DR links, as the JSON front end serves them (`tether dr`), and the
//! secondary's creation a gateway of this cluster asks for.

use tether_proto::admin::VolumeView;
use tether_proto::dr::{DrLinkRequest, DrLinkView, DrSecondaryRequest};

use super::{ApiResult, AppState};
use crate::grants::Caller;

pub(crate) async fn link(state: AppState, request: DrLinkRequest) -> ApiResult<DrLinkView> {
    crate::dr::link(state.store.as_ref(), &state.cluster, &request).await
}

pub(crate) async fn list(state: AppState) -> ApiResult<Vec<DrLinkView>> {
    crate::dr::list(state.store.as_ref(), &state.cluster).await
}

pub(crate) async fn status(state: AppState, volume: String) -> ApiResult<DrLinkView> {
    crate::dr::view(state.store.as_ref(), &state.cluster, &volume).await
}

pub(crate) async fn promote(state: AppState, volume: String, force: bool) -> ApiResult<DrLinkView> {
    crate::dr::promote(state.store.as_ref(), &state.cluster, &volume, force).await
}

/// The fenced side becomes the secondary: it needs a journal of its own
/// first (it was the primary and had none).
pub(crate) async fn failback(state: AppState, volume: String) -> ApiResult<DrLinkView> {
    if let Some(create) =
        crate::dr::failback_journal(state.store.as_ref(), &state.cluster, &volume).await?
    {
        super::volumes::create_volume(state.clone(), Caller::Admin, create).await?;
    }
    crate::dr::failback(state.store.as_ref(), &state.cluster, &volume).await
}

/// Records the secondary and creates it and its journal, waiting for
/// their nodes as any create does.
pub(crate) async fn create_secondary(
    state: AppState,
    request: DrSecondaryRequest,
) -> ApiResult<Vec<VolumeView>> {
    let creates =
        crate::dr::record_secondary(state.store.as_ref(), &state.cluster, &request).await?;
    let mut views = Vec::new();
    for create in creates {
        views.push(super::volumes::create_volume(state.clone(), Caller::Admin, create).await?);
    }
    Ok(views)
}
