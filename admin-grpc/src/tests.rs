//! Every JSON shape the gRPC API carries survives the trip to its message
//! and back with every field set: a field renamed on one side only fails here.

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tether_proto::admin::*;
use tether_proto::federation::*;

use crate::{convert, pb};

fn round_trip<Shape, Message>(shape: Shape)
where
    Shape: Serialize + DeserializeOwned + PartialEq + Debug,
    Message: Serialize + DeserializeOwned + Default + PartialEq + Debug,
{
    let message: Message = convert("shape", &shape).unwrap();
    assert_ne!(message, Message::default(), "{shape:?} lost its fields");
    let back: Shape = convert("message", &message).unwrap();
    assert_eq!(back, shape);
}

fn labels() -> BTreeMap<String, String> {
    [("zone".to_string(), "eu-1a".to_string())].into()
}

fn encryption() -> EncryptionSpec {
    EncryptionSpec {
        cipher: "aes-256-xts".into(),
        sector_bytes: 4096,
        wrapped_key: "ab".repeat(72),
        key_check: "cd".repeat(32),
    }
}

#[test]
fn volume_shapes() {
    round_trip::<_, pb::VolumeView>(VolumeView {
        name: "db".into(),
        state: "healthy".into(),
        errors: vec!["one".into()],
        size_bytes: 1 << 30,
        cluster: "central".into(),
        epoch: 7,
        master: "node-1".into(),
        copies: vec![CopyView {
            node: "node-2".into(),
            role: "replica".into(),
            state: "syncing".into(),
        }],
        attachments: vec![AttachmentView {
            uri: "nbd+unix:///db?socket=/x".into(),
            from: "satellite-1".into(),
            node: "satellite-1".into(),
        }],
        chunk_size_bytes: 1 << 20,
        allocated_bytes: 3,
        dirty_chunks: 4,
        syncs: vec![SyncProgress {
            node: "node-2".into(),
            phase: "copying".into(),
            chunks_total: 1,
            chunks_compared: 2,
            chunks_differing: 3,
            chunks_copied: 4,
            bytes_copied: 5,
            hashes_fetched: 6,
            bytes_per_sec: 7,
            eta_seconds: 8,
            started_unix_ms: 9,
            elapsed_ms: 10,
            source_bytes_read: 11,
        }],
        encryption: Some(encryption()),
    });
    round_trip::<_, pb::CreateVolumeRequest>(CreateVolumeRequest {
        name: "db".into(),
        size_bytes: 1 << 30,
        replicas: 2,
        placement: labels(),
        encryption: Some(encryption()),
    });
    round_trip::<_, pb::AttachVolumeRequest>(AttachRequest {
        nbd: "tcp:10809".into(),
        from: Some("satellite-1".into()),
        node: Some("node-1".into()),
        data_key: Some("00".repeat(64)),
    });
    round_trip::<_, pb::AttachResponse>(AttachResponse {
        uri: "nbd://x".into(),
    });
    round_trip::<_, pb::VerifyReport>(VerifyReport {
        id: 3,
        repair: true,
        state: "done".into(),
        master: "node-1".into(),
        epoch: 2,
        copies: vec![CopyVerification {
            node: "node-2".into(),
            chunks_compared: 10,
            chunks_differing: 1,
            differing: vec![4],
            chunks_repaired: 1,
        }],
        error: Some("none".into()),
    });
}

#[test]
fn node_shapes() {
    round_trip::<_, pb::NodeView>(NodeView {
        name: "node-1".into(),
        cluster: "central".into(),
        state: "up".into(),
        capacity_bytes: 1,
        provisionable_bytes: 2,
        provisioned_bytes: 3,
        allocated_bytes: 4,
        volumes: 5,
        io_backend: "io_uring".into(),
        labels: labels(),
        block_addr: Some("127.0.0.1:1".into()),
        control_addr: Some("127.0.0.1:2".into()),
        quarantined: labels(),
    });
    round_trip::<_, pb::JoinTokenRequest>(JoinTokenRequest {
        node: None,
        ttl_seconds: Some(60),
        uses: Some(3),
    });
    round_trip::<_, pb::JoinTokenResponse>(JoinTokenResponse {
        token: "t".into(),
        node: Some("node-4".into()),
        expires_unix_ms: 9,
    });
    round_trip::<_, pb::RenewRequest>(RenewRequest {
        csr_pem: "csr".into(),
        addresses: vec!["10.0.0.1".into()],
    });
    round_trip::<_, pb::CertificateResponse>(CertificateResponse {
        chain_pem: "chain".into(),
        trust_pem: "trust".into(),
    });
}

#[test]
fn federation_shapes() {
    round_trip::<_, pb::ClusterView>(ClusterView {
        name: "satellite-1".into(),
        role: "satellite".into(),
        nodes_up: 0,
        state: "joined".into(),
        last_seen_unix_ms: Some(1),
        certificate_not_after_unix_ms: Some(2),
    });
    round_trip::<_, pb::AddSatelliteRequest>(AddSatelliteRequest {
        name: "edge".into(),
        ttl_seconds: Some(60),
    });
    round_trip::<_, pb::AddSatelliteResponse>(AddSatelliteResponse {
        name: "edge".into(),
        token: "t".into(),
        expires_unix_ms: 3,
    });
    round_trip::<_, pb::SatelliteJoinRequest>(SatelliteJoinRequest {
        name: "edge".into(),
        token: "t".into(),
        csr_pem: "csr".into(),
    });
    for scope in [
        GrantScope::Volume {
            volume: "db".into(),
            read_only: true,
        },
        GrantScope::Prefix {
            prefix: "ci-".into(),
            capacity_bytes: 1 << 30,
            count: 20,
        },
    ] {
        let grant = GrantRecord {
            satellite: "edge".into(),
            scope: scope.clone(),
            created_unix_ms: 5,
        };
        round_trip::<_, pb::Grant>(grant.clone());
        round_trip::<_, pb::Grant>(AddGrantRequest {
            satellite: "edge".into(),
            scope,
        });
        round_trip::<_, pb::Grant>(GrantView {
            grant,
            used_count: Some(1),
            used_bytes: Some(2),
        });
    }
    round_trip::<_, pb::SatelliteAttachments>(SatelliteAttachments {
        version: "v".into(),
        attachments: vec![SatelliteAttachment {
            volume: "db".into(),
            endpoint: "unix:/run/db.sock".into(),
            data_key: Some("00".repeat(64)),
        }],
    });
    round_trip::<_, pb::PresentingStatus>(PresentingStatus {
        version: 1,
        node: "edge".into(),
        serving: vec![ServingEndpoint {
            endpoint: "unix:/x".into(),
            uri: "nbd+unix:///db?socket=/x".into(),
        }],
        errors: vec!["e".into()],
        failures: vec![EndpointFailure {
            endpoint: "unix:/y".into(),
            error: "busy".into(),
        }],
    });
}

#[test]
fn the_audit_list_round_trips_through_its_message() {
    use tether_proto::audit::{chain, AuditDraft, AuditList};
    let entry = chain(
        None,
        AuditDraft {
            at_unix_ms: 7,
            identity: "tether://central/admin/ops".into(),
            peer: "127.0.0.1:4000".into(),
            action: "gRPC ResizeVolume".into(),
            target: "name=db size_bytes=1".into(),
            outcome: "ok".into(),
            status: 200,
        },
    );
    round_trip::<_, pb::AuditList>(AuditList {
        entries: vec![entry],
        intact: true,
        broken: None,
        omitted: 3,
    });
}
