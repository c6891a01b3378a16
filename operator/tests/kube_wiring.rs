//! The operator's Kubernetes side against recorded API-server answers (no
//! API server can run here): one SatelliteCluster reconcile reads its token
//! Secret (absent: the API server's 404 Status), writes the new token into
//! it by server-side apply with an owner reference to the resource, and
//! applies the status with its Ready condition; a VolumeGrant gets the
//! operator's finalizer, and its deletion revokes the grant before the
//! finalizer comes off. The registry is real.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use multicluster_tests::harness::DevFederation;
use serde_json::{json, Value};
use tether_operator::controller::{apply_satellite, grant_changed, Context};
use tether_operator::crd::{SatelliteCluster, SatelliteClusterSpec, VolumeGrant};
use tether_tls::{Credentials, Identity, Role, TlsContext};

/// What the fake API server was asked: method, path and query, body.
type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

/// Answers as a v1.30 API server does for these requests.
fn recorded_answer(method: &str, path: &str, body: &Value) -> (u16, Value) {
    match (method, path) {
        ("GET", "/api/v1/namespaces/tether/secrets/edge-k8s-join-token") => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": "secrets \"edge-k8s-join-token\" not found", "reason": "NotFound",
                   "details": {"name": "edge-k8s-join-token", "kind": "secrets"}, "code": 404}),
        ),
        ("PATCH", "/api/v1/namespaces/tether/secrets/edge-k8s-join-token") => {
            let mut secret = body.clone();
            secret["metadata"]["uid"] = "5f0e2c1a-0000-4000-8000-000000000002".into();
            secret["metadata"]["resourceVersion"] = "1042".into();
            (200, secret)
        }
        (
            "PATCH",
            "/apis/tether.io/v1alpha1/namespaces/tether/satelliteclusters/edge-k8s/status",
        ) => (200, resource_json(Some(body["status"].clone()))),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                   "message": format!("the test's recording has no answer for {method} {path}")}),
        ),
    }
}

fn resource_json(status: Option<Value>) -> Value {
    let mut resource = json!({
        "apiVersion": "tether.io/v1alpha1",
        "kind": "SatelliteCluster",
        "metadata": {"name": "edge-k8s", "namespace": "tether", "uid": "5f0e2c1a-0000-4000-8000-000000000001",
                     "generation": 3, "resourceVersion": "1041"},
        "spec": {"tokenTtlSeconds": 600}
    });
    if let Some(status) = status {
        resource["status"] = status;
    }
    resource
}

/// A Kubernetes API server that answers from `answers` and records every
/// request it was sent.
fn fake_api_server(
    answers: fn(&str, &str, &Value) -> (u16, Value),
) -> (
    impl tower::Service<
            http::Request<kube::client::Body>,
            Response = http::Response<Full<Bytes>>,
            Error = Box<dyn std::error::Error + Send + Sync>,
            Future = impl Send,
        > + Send
        + 'static,
    Seen,
) {
    let seen: Seen = Arc::default();
    let recorder = seen.clone();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let recorder = recorder.clone();
        async move {
            let method = request.method().to_string();
            let path = request.uri().path().to_string();
            let query = request.uri().query().unwrap_or_default().to_string();
            let bytes = request.into_body().collect().await?.to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (status, answer) = answers(&method, &path, &body);
            recorder
                .lock()
                .unwrap()
                .push((method, format!("{path}?{query}"), body));
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .unwrap(),
            )
        }
    });
    (service, seen)
}

fn context(federation: &DevFederation, kube: kube::Client) -> Context {
    let operator = federation.issue(&Identity::new("central", Role::Admin, "operator"), None);
    let tls = TlsContext::new(&Credentials::load(&operator).unwrap()).unwrap();
    Context {
        kube,
        admin: admin_grpc::connect(&format!("https://{}", federation.admin_addr()), tls).unwrap(),
        namespace: "tether".into(),
    }
}

#[test]
fn a_satellite_reconcile_writes_its_token_secret_and_status() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    let (api_server, seen) = fake_api_server(recorded_answer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = context(&federation, kube::Client::new(api_server, "tether"));
        let resource: SatelliteCluster = serde_json::from_value(resource_json(None)).unwrap();
        assert_eq!(
            resource.spec,
            SatelliteClusterSpec {
                satellite_name: None,
                token_ttl_seconds: Some(600)
            }
        );
        apply_satellite(Arc::new(resource), &ctx).await.unwrap();
    });

    let seen = seen.lock().unwrap();
    let calls: Vec<(&str, &str)> = seen
        .iter()
        .map(|(method, path, _)| (method.as_str(), path.split('?').next().unwrap()))
        .collect();
    assert_eq!(
        calls,
        [
            (
                "GET",
                "/api/v1/namespaces/tether/secrets/edge-k8s-join-token"
            ),
            (
                "PATCH",
                "/api/v1/namespaces/tether/secrets/edge-k8s-join-token"
            ),
            (
                "PATCH",
                "/apis/tether.io/v1alpha1/namespaces/tether/satelliteclusters/edge-k8s/status"
            ),
        ]
    );
    let (_, secret_path, secret) = &seen[1];
    assert!(
        secret_path.contains("fieldManager=tether-operator"),
        "{secret_path}"
    );
    let token = secret["stringData"]["token"].as_str().expect("the token");
    assert_eq!(token.len(), 64, "{secret}");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            owner["kind"].as_str(),
            owner["name"].as_str(),
            owner["controller"].as_bool()
        ),
        (Some("SatelliteCluster"), Some("edge-k8s"), Some(true)),
        "{secret}"
    );
    let (_, _, status) = &seen[2];
    assert_eq!(status["status"]["state"], "pending", "{status}");
    assert_eq!(status["status"]["tokenSecret"], "edge-k8s-join-token");
    let ready = &status["status"]["conditions"][0];
    assert_eq!(
        (
            ready["type"].as_str(),
            ready["status"].as_str(),
            ready["reason"].as_str()
        ),
        (Some("Ready"), Some("False"), Some("AwaitingJoin")),
        "{status}"
    );
    assert_eq!(ready["observedGeneration"], 3);
    // The token the Secret holds is the satellite's: it joins with it.
    federation.join_satellite("edge-k8s", token).unwrap();
    let clusters = federation.tether_json(&["cluster", "list"]).unwrap();
    assert!(
        clusters
            .as_array()
            .unwrap()
            .iter()
            .any(|cluster| cluster["name"] == "edge-k8s" && cluster["state"] == "joined"),
        "{clusters}"
    );
}

fn grant_json(finalizers: &[&str], deleting: bool) -> Value {
    let mut grant = json!({
        "apiVersion": "tether.io/v1alpha1",
        "kind": "VolumeGrant",
        "metadata": {"name": "edge-shared", "namespace": "tether", "uid": "5f0e2c1a-0000-4000-8000-000000000003",
                     "generation": 1, "resourceVersion": "2001", "finalizers": finalizers},
        "spec": {"satellite": "edge-g", "volume": "shared", "readOnly": true}
    });
    if deleting {
        grant["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z".into();
    }
    grant
}

/// The API server's answers for a VolumeGrant's finalizer patches.
fn grant_answer(method: &str, path: &str, _body: &Value) -> (u16, Value) {
    match (method, path) {
        ("PATCH", "/apis/tether.io/v1alpha1/namespaces/tether/volumegrants/edge-shared") => {
            (200, grant_json(&["tether.io/registry"], false))
        }
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                   "message": format!("the test's recording has no answer for {method} {path}")}),
        ),
    }
}

/// A new VolumeGrant first gets the operator's finalizer (and nothing in
/// the registry yet); a deleted one has its grant revoked in the registry
/// before the finalizer is taken off, so the resource cannot go while the
/// grant stays.
#[test]
fn a_grant_gets_the_finalizer_and_its_deletion_revokes_it_in_the_registry() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "shared", "--size", "16MiB"])
        .unwrap();
    federation.satellite("edge-g");
    federation
        .tether_ok(&[
            "grant",
            "add",
            "edge-g",
            "--volume",
            "shared",
            "--read-only",
        ])
        .unwrap();
    let grants = || {
        federation
            .tether_json(&["grant", "list", "--satellite", "edge-g"])
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    let (api_server, seen) = fake_api_server(grant_answer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ctx = Arc::new(context(
            &federation,
            kube::Client::new(api_server, "tether"),
        ));
        let new: VolumeGrant = serde_json::from_value(grant_json(&[], false)).unwrap();
        grant_changed(Arc::new(new), ctx.clone()).await.unwrap();
        assert_eq!(
            grants(),
            1,
            "adding the finalizer changes nothing in the registry"
        );
        let deleted: VolumeGrant =
            serde_json::from_value(grant_json(&["tether.io/registry"], true)).unwrap();
        grant_changed(Arc::new(deleted), ctx).await.unwrap();
    });
    assert_eq!(grants(), 0, "the deleted resource's grant is revoked");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (_, _, added) = &seen[0];
    assert_eq!(
        added[1],
        json!({"op": "add", "path": "/metadata/finalizers", "value": ["tether.io/registry"]}),
        "{added}"
    );
    let (_, _, removed) = &seen[1];
    assert_eq!(
        removed[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"}),
        "{removed}"
    );
}
