//! The Kubernetes side: one kube-runtime `Controller` per resource kind,
//! each reconcile handing the resource to [`crate::reconcile`] and writing
//! back what it returns (the status with its `Ready` condition, and for a
//! satellite the Secret holding its join token). Finalizers make deletion
//! reach the registry: a deleted SatelliteCluster is removed there, a
//! deleted VolumeGrant's grant revoked.

use std::sync::Arc;
use std::time::Duration;

use admin_grpc::Client;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{finalizer, Event};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use crate::crd::{DrLink, SatelliteCluster, VolumeGrant};
use crate::reconcile::{self, Ready};
use crate::OperatorError;

/// On every resource the operator manages, until the registry has let go.
pub const FINALIZER: &str = "tether.io/registry";
const MANAGER: &str = "tether-operator";
/// How often a settled resource is looked at again (the registry can change
/// under it: a satellite joins, a link's lag moves).
const SETTLED: Duration = Duration::from_secs(300);
const WAITING: Duration = Duration::from_secs(15);
const DR_REPORT: Duration = Duration::from_secs(30);

pub struct Context {
    pub kube: kube::Client,
    pub admin: Client,
    pub namespace: String,
}

/// The `Ready` condition to store: `previous` with Ready replaced, its
/// transition time kept when its status did not change.
pub fn conditions(
    previous: &[Condition],
    ready: &Ready,
    generation: Option<i64>,
) -> Vec<Condition> {
    let status = if ready.ready { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|condition| condition.type_ == "Ready" && condition.status == status)
        .map(|condition| condition.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::chrono::Utc::now()));
    let mut conditions: Vec<Condition> = previous
        .iter()
        .filter(|condition| condition.type_ != "Ready")
        .cloned()
        .collect();
    conditions.push(Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: ready.reason.into(),
        message: ready.message.clone(),
        last_transition_time: since,
        observed_generation: generation,
    });
    conditions
}

async fn write_status<K, S>(api: &Api<K>, object: &K, status: &S) -> Result<(), OperatorError>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The Secret a satellite's join token is kept in.
pub fn token_secret_name(resource: &SatelliteCluster) -> String {
    format!("{}-join-token", resource.name_any())
}

/// One reconcile of a SatelliteCluster that exists (not being deleted).
pub async fn apply_satellite(
    resource: Arc<SatelliteCluster>,
    ctx: &Context,
) -> Result<Action, OperatorError> {
    let api: Api<SatelliteCluster> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    let name = resource
        .spec
        .satellite_name
        .clone()
        .unwrap_or_else(|| resource.name_any());
    let secret_name = token_secret_name(&resource);
    let exists = secrets.get_opt(&secret_name).await?.is_some();
    let mut admin = ctx.admin.clone();
    let outcome =
        reconcile::satellite(&mut admin, &name, &resource.spec, &secret_name, exists).await?;
    if let Some(token) = &outcome.new_token {
        let owner = resource.controller_owner_ref(&()).into_iter().collect();
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(secret_name.clone()),
                namespace: Some(ctx.namespace.clone()),
                owner_references: Some(owner),
                ..Default::default()
            },
            string_data: Some([("token".to_string(), token.clone())].into()),
            ..Default::default()
        };
        secrets
            .patch(
                &secret_name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        tracing::info!(satellite = %name, secret = %secret_name, "minted a join token");
    }
    let previous = resource.status.clone().unwrap_or_default().conditions;
    let mut status = outcome.status;
    status.conditions = conditions(&previous, &outcome.ready, resource.metadata.generation);
    write_status(&api, resource.as_ref(), &status).await?;
    Ok(Action::requeue(if outcome.ready.ready {
        SETTLED
    } else {
        WAITING
    }))
}

/// One reconcile of a VolumeGrant that exists.
pub async fn apply_grant(
    resource: Arc<VolumeGrant>,
    ctx: &Context,
) -> Result<Action, OperatorError> {
    let api: Api<VolumeGrant> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    let mut admin = ctx.admin.clone();
    let (mut status, ready) = reconcile::grant(&mut admin, &resource.spec).await?;
    let previous = resource.status.clone().unwrap_or_default().conditions;
    status.conditions = conditions(&previous, &ready, resource.metadata.generation);
    write_status(&api, resource.as_ref(), &status).await?;
    Ok(Action::requeue(if ready.ready { SETTLED } else { WAITING }))
}

/// One reconcile of a DrLink.
pub async fn apply_dr_link(resource: Arc<DrLink>, ctx: &Context) -> Result<Action, OperatorError> {
    let api: Api<DrLink> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    let mut admin = ctx.admin.clone();
    let (mut status, ready) = reconcile::dr_link(&mut admin, &resource.spec).await?;
    let previous = resource.status.clone().unwrap_or_default().conditions;
    status.conditions = conditions(&previous, &ready, resource.metadata.generation);
    write_status(&api, resource.as_ref(), &status).await?;
    Ok(Action::requeue(DR_REPORT))
}

/// A SatelliteCluster's reconcile, finalizer included (what the controller runs).
pub async fn satellite_changed(
    resource: Arc<SatelliteCluster>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let api: Api<SatelliteCluster> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    finalizer(&api, FINALIZER, resource, |event| async {
        match event {
            Event::Apply(resource) => apply_satellite(resource, &ctx).await,
            Event::Cleanup(resource) => {
                let name = resource
                    .spec
                    .satellite_name
                    .clone()
                    .unwrap_or_else(|| resource.name_any());
                reconcile::remove_satellite(&mut ctx.admin.clone(), &name).await?;
                tracing::info!(satellite = %name, "satellite removed: its resource was deleted");
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|err| OperatorError::Finalizer(err.to_string()))
}

/// A VolumeGrant's reconcile, finalizer included.
pub async fn grant_changed(
    resource: Arc<VolumeGrant>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let api: Api<VolumeGrant> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
    finalizer(&api, FINALIZER, resource, |event| async {
        match event {
            Event::Apply(resource) => apply_grant(resource, &ctx).await,
            Event::Cleanup(resource) => {
                reconcile::remove_grant(&mut ctx.admin.clone(), &resource.spec).await?;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|err| OperatorError::Finalizer(err.to_string()))
}

async fn dr_link_changed(
    resource: Arc<DrLink>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    apply_dr_link(resource, &ctx).await
}

fn retry<K>(_: Arc<K>, error: &OperatorError, _: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(WAITING)
}

/// Runs the three controllers until the process ends.
pub async fn run(ctx: Context) {
    let ctx = Arc::new(ctx);
    let namespace = ctx.namespace.clone();
    let satellites = Controller::new(
        Api::<SatelliteCluster>::namespaced(ctx.kube.clone(), &namespace),
        watcher::Config::default(),
    )
    .run(satellite_changed, retry, ctx.clone())
    .for_each(|done| async move { log_done("SatelliteCluster", done) });
    let grants = Controller::new(
        Api::<VolumeGrant>::namespaced(ctx.kube.clone(), &namespace),
        watcher::Config::default(),
    )
    .run(grant_changed, retry, ctx.clone())
    .for_each(|done| async move { log_done("VolumeGrant", done) });
    let links = Controller::new(
        Api::<DrLink>::namespaced(ctx.kube.clone(), &namespace),
        watcher::Config::default(),
    )
    .run(dr_link_changed, retry, ctx.clone())
    .for_each(|done| async move { log_done("DrLink", done) });
    futures::join!(satellites, grants, links);
}

fn log_done<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, done: Result<T, E>) {
    match done {
        Ok(object) => tracing::debug!(kind, ?object, "reconciled"),
        Err(error) => tracing::warn!(kind, %error, "reconcile error"),
    }
}
