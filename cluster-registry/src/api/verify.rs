//! Verifying a volume's copies: the registry asks the master through the
//! store (`verify/{name}`, a new id each time) and waits for the master's
//! status to carry the answer with that id.

use std::time::Duration;
use tether_proto::keys::Kind;

use tether_proto::admin::{VerifyReport, VerifyRequest, VerifyRequestRecord};

use super::{ApiResult, AppState};
use crate::RegistryError;

/// How long a verification may take (it reads every chunk's hash on every copy).
const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);

/// `POST /v1/volumes/{name}/verify`: compares every in-sync copy's hash
/// tree with the master's; with `repair`, copies what differs from the master.
pub(crate) async fn verify_volume(
    state: AppState,
    name: String,
    request: VerifyRequest,
) -> ApiResult<VerifyReport> {
    let (spec, _) = state.spec(&name).await?;
    let id = rand::random::<u64>() | 1;
    let record = VerifyRequestRecord {
        version: 1,
        id,
        repair: request.repair,
    };
    state
        .store
        .put(
            &state.key(Kind::Verify, &name),
            serde_json::to_vec(&record).expect("verify request serializes"),
            None,
        )
        .await?;
    tracing::info!(volume = %name, id, repair = request.repair, "verification requested");
    let master = state
        .group(&name)
        .await?
        .map_or(spec.master.clone(), |group| group.master);
    let report = state
        .wait_for_within(&name, &master, "verify", VERIFY_TIMEOUT, |status| {
            let report = status?.verify.as_ref()?;
            (report.id == id && report.state != "running").then(|| Ok(report.clone()))
        })
        .await?;
    if let Some(error) = &report.error {
        return Err(RegistryError::NodeFailed {
            name,
            node: report.master.clone(),
            reason: error.clone(),
        });
    }
    Ok(report)
}
