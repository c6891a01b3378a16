//! Two datacentres (`dev up --dr`): the central cluster and its DR peer,
//! each a cluster of its own (etcd, CA, registry, nodes, gateways), which
//! trust nothing of each other until they are linked.

use std::path::Path;

use multicluster_tests::dr::attach_in_dr;
use multicluster_tests::harness::DevFederation;
use serde_json::Value;

fn federation_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("federation.json")).unwrap()).unwrap()
}

/// `tether cluster link dr --endpoint PEER_ADMIN --token TOKEN`.
fn try_link(federation: &DevFederation, peer_admin: &str, token: &str) -> std::process::Output {
    federation.tether(&[
        "cluster",
        "link",
        "dr",
        "--endpoint",
        peer_admin,
        "--token",
        token,
    ])
}

/// The same, which must succeed; its output.
fn link(federation: &DevFederation, peer_admin: &str, token: &str) -> String {
    let output = try_link(federation, peer_admin, token);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn dev_up_dr_starts_two_datacentres_that_do_not_trust_each_other_yet() {
    let federation = DevFederation::builder().nodes(2).dr().start().unwrap();
    let dir = federation.dir();
    let peer_dir = dir.join("dr");
    let central = federation_json(dir);
    let peer = federation_json(&peer_dir);
    assert_eq!(central["clusters"][0]["name"], "central");
    assert_eq!(central["peers"][0]["name"], "dr");
    assert_eq!(peer["clusters"][0]["name"], "dr");
    assert_eq!(peer["clusters"][0]["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(peer["clusters"][0]["gateways"].as_array().unwrap().len(), 2);
    assert_ne!(central["admin"], peer["admin"]);
    assert_ne!(
        central["clusters"][0]["etcd"]["endpoints"],
        peer["clusters"][0]["etcd"]["endpoints"]
    );
    // Two CAs.
    assert_ne!(
        std::fs::read(dir.join("admin/ca.crt")).unwrap(),
        std::fs::read(peer_dir.join("admin/ca.crt")).unwrap()
    );

    // Each has its own volumes.
    let created = federation.tether_peer("dr", &["volume", "create", "in-dr", "--size", "64MiB"]);
    assert!(created.status.success(), "{created:?}");
    let listed = federation.tether_ok(&["volume", "list"]).unwrap();
    assert!(!listed.contains("in-dr"), "{listed}");

    // Unlinked, neither admits the other's certificates: the peer's admin
    // is a stranger to the central registry.
    let stranger = federation.tether_as(&peer_dir.join("admin"), &["volume", "list"]);
    assert!(!stranger.status.success());

    // Down and up: both datacentres stop and come back, data kept.
    federation.down().unwrap();
    let federation = federation.up().unwrap();
    let listed = federation.tether_peer("dr", &["volume", "list"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("in-dr"),
        "{listed:?}"
    );
}

#[test]
fn cluster_link_pairs_the_datacentres_once_with_a_token_naming_the_peer_ca() {
    let federation = DevFederation::builder().nodes(1).dr().start().unwrap();
    let peer_admin = federation_json(&federation.dir().join("dr"))["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let token_of = |output: std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    let token = token_of(federation.tether_peer("dr", &["cluster", "add-peer", "central"]));
    let (secret, hash) = token.rsplit_once('.').unwrap();

    // A token whose hash is not the peer's CA: refused before anything is
    // sent (a man in the middle would present another CA).
    let forged = format!("{secret}.{}", "0".repeat(64));
    let refused = try_link(&federation, &peer_admin, &forged);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not the cluster that minted it"),
        "{stderr}"
    );
    // The token is for `central`: another name is refused by the peer.
    let other = federation.tether_peer("dr", &["cluster", "add-peer", "elsewhere"]);
    let other = token_of(other);
    let refused = try_link(&federation, &peer_admin, &other);
    assert!(!refused.status.success(), "{refused:?}");

    let linked = link(&federation, &peer_admin, &token);
    assert!(linked.contains(hash), "{linked}");
    // Each side holds the other's CA: its hash is the one the other's
    // token carries, or the one its own CA has.
    let here: Value = serde_json::from_str(
        &federation
            .tether_ok(&["-o", "json", "cluster", "peers"])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(here[0]["name"], "dr");
    assert_eq!(here[0]["state"], "linked");
    assert_eq!(here[0]["ca_hash"], hash);
    let there: Value = serde_json::from_slice(
        &federation
            .tether_peer("dr", &["-o", "json", "cluster", "peers"])
            .stdout,
    )
    .unwrap();
    let central = there
        .as_array()
        .unwrap()
        .iter()
        .find(|peer| peer["name"] == "central")
        .unwrap();
    assert_eq!(central["state"], "linked");
    let central_ca = std::fs::read_to_string(federation.dir().join("admin/ca.crt")).unwrap();
    assert_eq!(
        central["ca_hash"].as_str().unwrap(),
        tether_tls::ca_hash(&central_ca).unwrap()
    );
    // Once: the token is spent, and a linked peer is not linked again.
    let again = try_link(&federation, &peer_admin, &token);
    assert!(!again.status.success());
}

/// Whether a QUIC session to `gateway` with `credentials` gets past the
/// handshake: `Ok(reason)` with the reason the gateway closed it, or
/// `Err` when the TLS handshake itself was refused.
fn session_with(credentials: &tether_tls::Credentials, gateway: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    credentials.save(dir.path()).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let quic = multicluster_tests::raw_link::endpoint(dir.path()).unwrap();
        let connecting = quic
            .connect(gateway.parse().unwrap(), "127.0.0.1")
            .map_err(|err| err.to_string())?;
        let connection = connecting.await.map_err(|err| err.to_string())?;
        match tokio::time::timeout(std::time::Duration::from_secs(10), connection.closed()).await {
            Ok(quinn::ConnectionError::ApplicationClosed(close)) => {
                Ok(String::from_utf8_lossy(&close.reason).into_owned())
            }
            // A handshake the server refused can surface after the client
            // finished its side (TLS 1.3): as a connection error here.
            Ok(other) => Err(other.to_string()),
            Err(_) => Ok("still open".into()),
        }
    })
}

#[test]
fn gateways_take_a_linked_peers_dr_peer_certificates_and_nothing_else_of_its() {
    use tether_tls::{CertificateAuthority, Identity, Role};
    let federation = DevFederation::builder().nodes(1).dr().start().unwrap();
    let peer_dir = federation.dir().join("dr");
    let gateway = federation.gateways()[0].1.clone();
    let central_ca = std::fs::read_to_string(federation.dir().join("admin/ca.crt")).unwrap();
    let peer_ca =
        CertificateAuthority::load_or_create(&peer_dir.join("dr/control/ca"), "dr").unwrap();
    // A credential from `ca` for `identity` that trusts central's CA (to
    // check the gateway's own certificate).
    let issue = |ca: &CertificateAuthority, identity: Identity| {
        let mut credentials = ca
            .issue_credentials(&identity, &[], std::time::Duration::from_secs(3600))
            .unwrap();
        credentials.trust_pem = central_ca.clone();
        credentials
    };
    let dr_gateway = issue(&peer_ca, Identity::new("dr", Role::DrPeer, "gateway-1"));

    // Unlinked: the peer's CA is a stranger.
    assert!(session_with(&dr_gateway, &gateway).is_err());

    let peer_admin = federation_json(&peer_dir)["admin"]
        .as_str()
        .unwrap()
        .to_string();
    let token = federation.tether_peer("dr", &["cluster", "add-peer", "central"]);
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    link(&federation, &peer_admin, &token);

    // Linked: its dr-peer certificate passes the handshake and the session
    // is served (the gateway learns the link from its store mirror) ...
    let started = std::time::Instant::now();
    let reason = loop {
        match session_with(&dr_gateway, &gateway) {
            Ok(reason) => break reason,
            Err(err) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(20),
                    "the gateway never took the linked peer's certificate: {err}"
                );
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    // The session is taken (it may carry DR streams) and kept open.
    assert_eq!(reason, "still open");
    // ... and nothing else the peer's CA signs: not a satellite, not an
    // admin, not a dr-peer claiming to be of this cluster or of another.
    for identity in [
        Identity::new("dr", Role::Satellite, "satellite-1"),
        Identity::new("dr", Role::Admin, "admin"),
        Identity::new("central", Role::DrPeer, "gateway-1"),
        Identity::new("central", Role::Satellite, "satellite-1"),
        Identity::new("third", Role::DrPeer, "gateway-1"),
    ] {
        let uri = identity.uri();
        let refused = session_with(&issue(&peer_ca, identity), &gateway);
        assert!(refused.is_err(), "{uri}: {refused:?}");
    }
    // A CA that is not the peer's, claiming the peer's name: refused.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = CertificateAuthority::load_or_create(stranger_dir.path(), "dr").unwrap();
    let forged = issue(&stranger, Identity::new("dr", Role::DrPeer, "gateway-1"));
    assert!(session_with(&forged, &gateway).is_err());
}

fn pair(federation: &DevFederation) {
    multicluster_tests::dr::pair(federation, &[]).unwrap();
}

fn dr_status(federation: &DevFederation, peer: Option<&str>, volume: &str) -> Value {
    multicluster_tests::dr::dr_status(federation, peer, volume).unwrap()
}

/// Waits until every write acknowledged so far is on the secondary.
fn wait_caught_up(federation: &DevFederation, volume: &str) -> Value {
    match multicluster_tests::dr::wait_caught_up(
        federation,
        volume,
        std::time::Duration::from_secs(90),
    ) {
        Ok(status) => status,
        Err(err) => panic!("{err}\n{}", federation.log_tails(40)),
    }
}

#[test]
fn a_dr_link_seeds_written_chunks_only_ships_changes_and_a_planned_promote_loses_nothing() {
    use multicluster_tests::clients::{file_hash, nbdcopy_in, nbdcopy_out, qemu_io, random_file};
    let federation = DevFederation::builder().nodes(2).dr().start().unwrap();
    pair(&federation);
    let dir = federation.dir().to_path_buf();
    let uri = federation.create_attached("db", "64MiB").unwrap();
    // 8 MiB written of 64: the seed ships those chunks, not the volume.
    let written = dir.join("written.bin");
    random_file(&written, 8 << 20, 7).unwrap();
    nbdcopy_in(&written, &uri).unwrap();

    let linked = federation.tether(&["dr", "link", "db", "--to", "dr", "--rpo", "5s"]);
    assert!(linked.status.success(), "{linked:?}");
    let seeded = wait_caught_up(&federation, "db");
    let chunk = 256 << 10;
    let shipped = seeded["extents_shipped"].as_u64().unwrap();
    assert!(
        (32..=34).contains(&shipped),
        "the seed of 8 MiB (32 chunks) shipped {shipped} chunks: {seeded}"
    );
    assert!(seeded["bytes_raw"].as_u64().unwrap() <= 34 * chunk);
    // The same link over gRPC (the same operations behind both front ends);
    // creating a secondary is for this cluster's gateways only.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let tls = tether_tls::TlsContext::new(
            &tether_tls::Credentials::load(&dir.join("admin")).unwrap(),
        )
        .unwrap();
        let admin_addr = federation_json(&dir)["admin"].as_str().unwrap().to_string();
        let mut admin = admin_grpc::connect(&admin_addr, tls).unwrap();
        let view = admin
            .get_dr_status(admin_grpc::pb::VolumeName { name: "db".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(view.role, "primary");
        assert_eq!(view.peer, "dr");
        assert!(view.last_point >= seeded["last_point"].as_u64().unwrap());
        let listed = admin
            .list_dr_links(admin_grpc::pb::Empty {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.links.len(), 1);
        let refused = admin
            .create_dr_secondary(admin_grpc::pb::DrSecondaryRequest {
                volume: "other".into(),
                peer: "dr".into(),
                size_bytes: 1 << 20,
                replicas: 1,
                rpo_secs: 30,
                generation: 1,
                chunk_size: 256 << 10,
                encryption: None,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    });
    assert_eq!(seeded["role"], "primary");
    assert_eq!(seeded["rpo_met"], true);
    // Random data does not shrink: it went as it is.
    assert!(seeded["bytes_wire"].as_u64().unwrap() >= 32 * chunk);

    // Changes ship as they come: 1 MiB of a compressible pattern at 40 MiB.
    qemu_io(&uri, &["write -P 0xab 40M 1M", "flush"]).unwrap();
    let after = wait_caught_up(&federation, "db");
    let more = after["extents_shipped"].as_u64().unwrap() - shipped;
    assert_eq!(more, 4, "1 MiB changed is 4 chunks: {after}");
    let wire = after["bytes_wire"].as_u64().unwrap() - seeded["bytes_wire"].as_u64().unwrap();
    assert!(
        wire < (1 << 20) / 10,
        "a repeated byte compresses: {wire} bytes on the wire"
    );

    // A link cut longer than the RPO: when it returns, shipping resumes
    // from the last acknowledged point with what changed meanwhile (eight
    // 4 KiB writes in eight chunks: 32 KiB, not a re-seed, not even the
    // eight 256 KiB chunks a comparison would send), and the RPO is met again.
    let cut = multicluster_tests::dr::LinkCut::new(&peer_gateways(&federation)).unwrap();
    let writes: Vec<String> = (0..8)
        .map(|index| format!("write -P 0x6{index} {}M 4k", 48 + index))
        .chain(["flush".to_string()])
        .collect();
    qemu_io(&uri, &writes.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let missed = wait_status(&federation, None, "db", "the RPO is missed", |status| {
        status["rpo_met"] == false
    });
    cut.restore();
    let resumed = wait_caught_up(&federation, "db");
    assert_eq!(resumed["rpo_met"], true, "{resumed}");
    // (Twice at most: a batch cut just after the writes may have been
    // staged into the cut link before it failed.)
    let shipped = resumed["bytes_raw"].as_u64().unwrap() - missed["bytes_raw"].as_u64().unwrap();
    assert!(
        (8 * 4096..=16 * 4096).contains(&shipped),
        "after the cut only the changed blocks ship: {shipped} bytes: {resumed}"
    );
    assert_eq!(
        resumed["chunks_compared"], missed["chunks_compared"],
        "no comparison, no re-seed: {resumed}"
    );

    let before = dir.join("central.bin");
    nbdcopy_out(&uri, &before).unwrap();
    let expected = file_hash(&before, 64 << 20).unwrap();

    // Planned promote, asked for on the secondary's side.
    let promoted = federation.tether_peer("dr", &["dr", "promote", "db"]);
    assert!(
        promoted.status.success(),
        "{promoted:?}\n{}",
        federation.log_tails(60)
    );
    let there = dr_status(&federation, Some("dr"), "db");
    assert_eq!(there["role"], "primary");
    assert_eq!(there["generation"], 2);
    let here = dr_status(&federation, None, "db");
    assert_eq!(here["role"], "secondary");
    assert_eq!(here["generation"], 2);
    // The old primary's clients are refused, not served stale data.
    assert!(qemu_io(&uri, &["read 0 4k"]).is_err());

    // The new primary holds every byte.
    let dr_uri = attach_in_dr(&federation, "db");
    let copy = dir.join("dr.bin");
    nbdcopy_out(&dr_uri, &copy).unwrap();
    assert_eq!(file_hash(&copy, 64 << 20).unwrap(), expected);
}

/// The peer's gateway endpoints, as its federation.json names them.
fn peer_gateways(federation: &DevFederation) -> Vec<String> {
    federation_json(&federation.dir().join("dr"))["clusters"][0]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gateway| gateway["endpoint"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `tether dr status` (`peer`: on the DR side) until `done` holds.
fn wait_status(
    federation: &DevFederation,
    peer: Option<&str>,
    volume: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    match multicluster_tests::dr::wait_dr(
        federation,
        peer,
        volume,
        std::time::Duration::from_secs(120),
        what,
        done,
    ) {
        Ok(status) => status,
        Err(err) => panic!("{err}\n{}", federation.log_tails(40)),
    }
}

fn image(uri: &str, path: &Path) -> Vec<u8> {
    multicluster_tests::clients::nbdcopy_out(uri, path).unwrap();
    std::fs::read(path).unwrap()
}

#[test]
fn a_forced_promote_is_a_consistent_point_the_old_primary_is_fenced_and_failback_ships_only_what_differs(
) {
    use multicluster_tests::clients::{http_get, qemu_io};
    use multicluster_tests::dr::{block_sequences, prefix_point, LinkCut, SequencedWriter};
    const BLOCKS: u64 = 512; // 2 MiB: 8 chunks
    let federation = DevFederation::builder().nodes(2).dr().start().unwrap();
    pair(&federation);
    let dir = federation.dir().to_path_buf();
    let uri = federation.create_attached("db", "64MiB").unwrap();
    let linked = federation.tether(&["dr", "link", "db", "--to", "dr", "--rpo", "3s"]);
    assert!(linked.status.success(), "{linked:?}");
    let seeded = wait_caught_up(&federation, "db");

    // Sequenced writes while batches ship.
    let writer = SequencedWriter::start(&uri, BLOCKS, 10_000_000).unwrap();
    let shipping = wait_status(
        &federation,
        None,
        "db",
        "batches ship under writes",
        |status| {
            status["last_point"].as_u64().unwrap() >= seeded["last_point"].as_u64().unwrap() + 3
                && status["extents_shipped"].as_u64().unwrap()
                    > seeded["extents_shipped"].as_u64().unwrap()
        },
    );
    assert!(writer.acked() > 0, "{shipping}");

    // Cut the link for longer than the RPO: the status says it is missed,
    // and so does the gauge an alert would watch.
    let cut = LinkCut::new(&peer_gateways(&federation)).unwrap();
    wait_status(&federation, None, "db", "the RPO is missed", |status| {
        status["rpo_met"] == false && status["lag_seconds"].as_f64().unwrap() > 3.0
    });
    // The gauge follows within its half-second tick.
    let nodes = federation_json(&dir)["clusters"][0]["nodes"].clone();
    let started = std::time::Instant::now();
    while !nodes.as_array().unwrap().iter().any(|node| {
        http_get(node["metrics"].as_str().unwrap(), "/metrics")
            .unwrap()
            .lines()
            .any(|line| line.starts_with("tether_dr_rpo_missed{volume=\"db\"} 1"))
    }) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "no node reports tether_dr_rpo_missed 1 for db"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Forced promote in the DR datacentre while the primary is cut off:
    // the secondary is a prefix of the acknowledged writes, never a mix.
    let acked_at_promote = writer.acked();
    let promoted = federation.tether_peer("dr", &["dr", "promote", "db", "--force"]);
    assert!(
        promoted.status.success(),
        "{promoted:?}\n{}",
        federation.log_tails(40)
    );
    let dr_uri = attach_in_dr(&federation, "db");
    let promoted_image = image(&dr_uri, &dir.join("promoted.bin"));
    let point = prefix_point(&block_sequences(&promoted_image, BLOCKS).unwrap(), BLOCKS).unwrap();
    assert!(point > 0 && point <= writer.acked(), "point {point}");
    assert!(
        point <= acked_at_promote + 1,
        "point {point} after {acked_at_promote}"
    );
    // The new primary takes writes: 1 MiB at 32 MiB.
    qemu_io(&dr_uri, &["write -P 0xcd 32M 1M", "flush"]).unwrap();
    let dr_image = image(&dr_uri, &dir.join("dr.bin"));

    // The old primary returns: it learns of generation 2 and is fenced;
    // its client is refused from then on (not served stale data).
    cut.restore();
    let fenced = wait_status(
        &federation,
        None,
        "db",
        "the old primary is fenced",
        |status| status["role"] == "fenced",
    );
    assert_eq!(fenced["generation"], 1);
    let (last, refusal) = writer.wait().unwrap();
    assert!(
        last > point,
        "the old primary took writes while cut off: {last} > {point}"
    );
    assert!(refusal.contains("refused"), "{refusal}");
    assert!(qemu_io(&uri, &["read 0 4k"]).is_err());

    // Failback: only the chunks that differ come back (at most the 8 of
    // the sequenced region and the 4 written in DR), then a planned
    // promote makes this side primary again with DR's content.
    let failback = federation.tether(&["dr", "failback", "db", "--watch"]);
    assert!(
        failback.status.success(),
        "{failback:?}\n{}",
        federation.log_tails(40)
    );
    let here = dr_status(&federation, None, "db");
    assert_eq!(here["role"], "primary");
    assert_eq!(here["generation"], 3);
    let received = &here["received"];
    let shipped = received["extents_shipped"].as_u64().unwrap();
    assert!(
        (4..=12).contains(&shipped),
        "failback shipped {shipped} chunks for at most 12 differing: {here}"
    );
    let there = dr_status(&federation, Some("dr"), "db");
    assert_eq!(there["role"], "secondary");
    assert_eq!(there["generation"], 3);
    let back = image(&uri, &dir.join("back.bin"));
    assert!(
        back == dr_image,
        "the failed-back primary differs from DR's content"
    );
}

/// The DR-side gateway receiving `db` now: the one that logged opening a
/// stream last (its pid and name).
fn receiving_gateway(federation: &DevFederation) -> (u64, String) {
    let gateways = federation_json(&federation.dir().join("dr"))["clusters"][0]["gateways"].clone();
    gateways
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|gateway| {
            let log = std::fs::read_to_string(gateway["log"].as_str().unwrap()).ok()?;
            let last = log
                .lines()
                .rfind(|line| line.contains("receiving DR batches"))?
                .to_string();
            let at = serde_json::from_str::<Value>(&last).ok()?["timestamp"]
                .as_str()?
                .to_string();
            Some((
                at,
                gateway["pid"].as_u64()?,
                gateway["name"].as_str()?.to_string(),
            ))
        })
        .max()
        .map(|(_, pid, name)| (pid, name))
        .expect("a DR gateway receives db")
}

/// Waits until the primary acknowledged `points` more points than `from`
/// (so batches flow again); that status.
fn wait_points(federation: &DevFederation, from: &Value, points: u64, what: &str) -> Value {
    let base = from["last_point"].as_u64().unwrap();
    wait_status(federation, None, "db", what, |status| {
        status["last_point"].as_u64().unwrap() >= base + points
    })
}

#[test]
fn kills_of_either_side_leave_the_secondary_at_a_point_and_a_planned_promote_under_load_loses_nothing(
) {
    use multicluster_tests::dr::{block_sequences, prefix_point, SequencedWriter};
    const BLOCKS: u64 = 512; // 2 MiB: 8 chunks
    let federation = DevFederation::builder().nodes(3).dr().start().unwrap();
    pair(&federation);
    let dir = federation.dir().to_path_buf();
    let (view, uri, _presenter) = federation.create_presented("db", "64MiB", 2);
    let linked = federation.tether(&[
        "dr",
        "link",
        "db",
        "--to",
        "dr",
        "--rpo",
        "5s",
        "--replicas",
        "2",
    ]);
    assert!(linked.status.success(), "{linked:?}");
    let seeded = wait_caught_up(&federation, "db");
    let writer = SequencedWriter::start(&uri, BLOCKS, 10_000_000).unwrap();
    let flowing = wait_points(&federation, &seeded, 3, "batches ship under writes");

    // kill -9 of the primary's master: the new master compares with the
    // secondary and ships what differs (the 8 written chunks at most), not
    // the volume again.
    let master = view["master"].as_str().unwrap().to_string();
    let _cmdline = federation.kill_node(&master);
    let after_failover = wait_status(&federation, None, "db", "the new master ships", |status| {
        status["generation"] == 1
            && status["chunks_compared"].as_u64().unwrap() > 0
            && status["last_point"].as_u64().unwrap() > flowing["last_point"].as_u64().unwrap()
            && status["batches"].as_u64().unwrap() >= 2
    });
    let compared = after_failover["chunks_compared"].as_u64().unwrap();
    assert_eq!(
        compared, 256,
        "one comparison of the 256 chunks: {after_failover}"
    );
    // Each batch carries at most the 2 MiB the writer touches.
    let shipped = after_failover["bytes_raw"].as_u64().unwrap();
    assert!(
        shipped <= (2 << 20) * after_failover["batches"].as_u64().unwrap(),
        "after a failover only changed chunks ship: {after_failover}"
    );

    // kill -9 of the gateway receiving the batches, mid-stream: the
    // shipper moves to the other one, which finishes any committed batch.
    let (pid, gateway) = receiving_gateway(&federation);
    federation.kill9(pid);
    let after_gateway = wait_points(
        &federation,
        &after_failover,
        3,
        "batches ship again after a gateway kill",
    );

    // kill -9 of the secondary's master node mid-apply: its replica takes
    // over in the DR cluster and batches go on.
    let dr_volume: Value = serde_json::from_slice(
        &federation
            .tether_peer("dr", &["-o", "json", "volume", "list"])
            .stdout,
    )
    .unwrap();
    let dr_master = dr_volume
        .as_array()
        .unwrap()
        .iter()
        .find(|volume| volume["name"] == "db")
        .unwrap()["master"]
        .as_str()
        .unwrap()
        .to_string();
    let dr_nodes = federation_json(&dir.join("dr"))["clusters"][0]["nodes"].clone();
    let dr_master_pid = dr_nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == dr_master.as_str())
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    federation.kill9(dr_master_pid);
    wait_points(
        &federation,
        &after_gateway,
        3,
        &format!("batches ship again after killing {gateway}'s peer node {dr_master}"),
    );
    assert!(writer.acked() > 0);

    // Planned promote under load: every acknowledged write is in the new
    // primary, and the writer's next write is refused.
    let promoted = federation.tether_peer("dr", &["dr", "promote", "db"]);
    assert!(
        promoted.status.success(),
        "{promoted:?}\n{}",
        federation.log_tails(40)
    );
    let (last, refusal) = writer.wait().unwrap();
    assert!(refusal.contains("refused"), "{refusal}");
    let dr_uri = attach_in_dr(&federation, "db");
    let promoted_image = image(&dr_uri, &dir.join("promoted.bin"));
    let point = prefix_point(&block_sequences(&promoted_image, BLOCKS).unwrap(), BLOCKS).unwrap();
    assert_eq!(
        point, last,
        "the new primary holds write {point}; {last} were acknowledged"
    );
}

#[test]
fn an_encrypted_volume_ships_ciphertext_only_and_opens_in_the_peer_with_its_key() {
    use multicluster_tests::clients::{nbdcopy_in, nbdcopy_out};
    use multicluster_tests::harness::{contains, files_under, write_key_file, LoopbackCapture};
    let federation = DevFederation::builder().nodes(1).dr().start().unwrap();
    pair(&federation);
    let dir = federation.dir().to_path_buf();
    let key_file = dir.join("user.key");
    let user_key: [u8; 32] = rand::random();
    write_key_file(&key_file, user_key);
    let key = key_file.to_str().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "vault",
            "--size",
            "64MiB",
            "--encrypt-key-file",
            key,
        ])
        .unwrap();
    let socket = dir.join("vault.sock");
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "vault",
            "--nbd",
            &format!("unix:{}", socket.display()),
            "--encrypt-key-file",
            key,
        ])
        .unwrap()
        .trim()
        .to_string();
    // A plaintext control: a volume without encryption, its own marker.
    let plain_uri = federation.create_attached("plain", "64MiB").unwrap();
    let secret = b"TETHER-DR-SECRET-PLAINTEXT-0123456789".repeat(30_000);
    let control = b"TETHER-DR-CONTROL-PLAINTEXT-98765432".repeat(30_000);
    std::fs::write(dir.join("secret.bin"), &secret[..1 << 20]).unwrap();
    std::fs::write(dir.join("control.bin"), &control[..1 << 20]).unwrap();
    nbdcopy_in(&dir.join("secret.bin"), &uri).unwrap();
    nbdcopy_in(&dir.join("control.bin"), &plain_uri).unwrap();

    let capture = LoopbackCapture::start().unwrap();
    for volume in ["vault", "plain"] {
        let linked = federation.tether(&["dr", "link", volume, "--to", "dr", "--rpo", "5s"]);
        assert!(linked.status.success(), "{linked:?}");
    }
    let shipped = wait_caught_up(&federation, "vault");
    wait_caught_up(&federation, "plain");
    let traffic = capture.finish();
    // Ciphertext does not shrink: it ships as it is.
    assert!(
        shipped["compression_ratio"].as_f64().unwrap() < 1.01,
        "{shipped}"
    );

    let marker = &secret[..64];
    let control_marker = &control[..64];
    let hex_key: String = user_key.iter().map(|byte| format!("{byte:02x}")).collect();
    assert!(
        traffic.len() > 2 << 20,
        "the capture saw {} bytes",
        traffic.len()
    );
    assert!(!contains(&traffic, marker), "plaintext on the link");
    assert!(!contains(&traffic, &user_key), "the key on the link");
    let mut control_found = false;
    for file in files_under(&dir.join("dr")) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        assert!(!contains(&bytes, marker), "plaintext in {}", file.display());
        assert!(
            !contains(&bytes, &user_key),
            "the key in {}",
            file.display()
        );
        assert!(
            !contains(&bytes, hex_key.as_bytes()),
            "the key (hex) in {}",
            file.display()
        );
        control_found |= contains(&bytes, control_marker);
    }
    assert!(
        control_found,
        "the unencrypted control's data is in the peer's pool"
    );

    // Promoted in the peer, it opens with the same key and holds the data.
    let promoted = federation.tether_peer("dr", &["dr", "promote", "vault"]);
    assert!(promoted.status.success(), "{promoted:?}");
    let dr_socket = dir.join("vault-dr.sock");
    let dr_uri = federation.tether_peer(
        "dr",
        &[
            "volume",
            "attach",
            "vault",
            "--nbd",
            &format!("unix:{}", dr_socket.display()),
            "--encrypt-key-file",
            key,
        ],
    );
    assert!(dr_uri.status.success(), "{dr_uri:?}");
    let dr_uri = String::from_utf8(dr_uri.stdout).unwrap().trim().to_string();
    nbdcopy_out(&dr_uri, &dir.join("vault-dr.bin")).unwrap();
    let read = std::fs::read(dir.join("vault-dr.bin")).unwrap();
    assert!(
        read[..1 << 20] == secret[..1 << 20],
        "the peer's copy does not decrypt to the data"
    );
}
