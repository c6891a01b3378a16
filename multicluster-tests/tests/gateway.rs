//! The federation gateway with real processes: etcd, three nodes, the two
//! gateways `dev up` starts, real QUIC on loopback. The satellite side is
//! `satellite_csi::LinkClient` (the client the satellite daemon uses); raw
//! quinn plays the hostile peers. Data checked by checksum, also through a
//! central NBD client.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use multicluster_tests::clients::{file_hash, nbdcopy_out};
use multicluster_tests::harness::DevFederation;
use satellite_csi::{BlockOp, LinkClient, LinkError, RemoteVolume};
use tether_proto::link::refusal;
use tether_tls::{CertificateAuthority, Credentials, Identity, Role, TlsContext};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn client(federation: &DevFederation, credentials: &Path) -> Arc<LinkClient> {
    let tls = TlsContext::new(&Credentials::load(credentials).unwrap()).unwrap();
    let endpoints = federation
        .gateways()
        .into_iter()
        .map(|(_, endpoint, _, _)| endpoint)
        .collect();
    LinkClient::new(&tls, endpoints).unwrap()
}

/// Deterministic bytes: half compressible (runs), half not.
fn block(seed: u64, length: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..length)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (seed as u8).wrapping_add((i / 512) as u8)
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }
        })
        .collect();
    Bytes::from(data)
}

async fn write(volume: &RemoteVolume, offset: u64, data: Bytes) -> Result<(), LinkError> {
    volume
        .execute(BlockOp::Write {
            offset,
            data,
            fua: false,
        })
        .await
        .map(|_| ())
}

async fn read(volume: &RemoteVolume, offset: u64, length: u32) -> Result<Bytes, LinkError> {
    Ok(volume
        .execute(BlockOp::Read { offset, length })
        .await?
        .expect("a read answers data"))
}

fn refused_with(result: Result<impl std::fmt::Debug, LinkError>, code: u32) -> String {
    match result {
        Err(LinkError::Refused {
            code: got, reason, ..
        }) if got == code => reason,
        other => panic!("expected a refusal with code {code}, got {other:?}"),
    }
}

#[test]
fn a_satellite_reads_and_writes_what_it_was_granted_and_nothing_else() {
    let federation = DevFederation::builder().start().unwrap();
    assert_eq!(federation.gateways().len(), 2);
    federation
        .tether_ok(&[
            "volume",
            "create",
            "edge-data",
            "--size",
            "64MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    federation
        .tether_ok(&["volume", "create", "private", "--size", "16MiB"])
        .unwrap();
    let a = federation.satellite("sat-a");
    let b = federation.satellite("sat-b");
    let c = federation.satellite("sat-c");
    federation
        .tether_ok(&["grant", "add", "sat-a", "--volume", "edge-data"])
        .unwrap();
    federation
        .tether_ok(&[
            "grant",
            "add",
            "sat-c",
            "--volume",
            "edge-data",
            "--read-only",
        ])
        .unwrap();
    let runtime = runtime();
    let length = 8usize << 20;
    let expected: Vec<u8> = (0..8).flat_map(|i| block(i, 1 << 20).to_vec()).collect();
    runtime.block_on(async {
        let volume = client(&federation, &a).open("edge-data").await.unwrap();
        assert_eq!(volume.welcome().size_bytes, 64 << 20);
        for i in 0..8u64 {
            write(&volume, i << 20, block(i, 1 << 20)).await.unwrap();
        }
        volume.execute(BlockOp::Flush).await.unwrap();
        let mut back = Vec::new();
        for i in 0..8u64 {
            back.extend_from_slice(&read(&volume, i << 20, 1 << 20).await.unwrap());
        }
        assert_eq!(blake3::hash(&back), blake3::hash(&expected));
        // Past the end: the request fails, the stream goes on.
        let past = volume
            .execute(BlockOp::Read {
                offset: 64 << 20,
                length: 4096,
            })
            .await;
        assert!(
            matches!(past, Err(LinkError::Io { errno: 22, .. })),
            "{past:?}"
        );
        assert_eq!(read(&volume, 0, 512).await.unwrap(), &expected[..512]);

        // Not granted: another volume, or another satellite's.
        let reason = refused_with(
            client(&federation, &a).open("private").await,
            refusal::NOT_GRANTED,
        );
        assert!(
            reason.contains("satellite sat-a has no grant for volume private"),
            "{reason}"
        );
        refused_with(
            client(&federation, &b).open("edge-data").await,
            refusal::NOT_GRANTED,
        );
        refused_with(
            client(&federation, &a).open("no-such-volume").await,
            refusal::NOT_GRANTED,
        );

        // Read-only: reads work, writes get EPERM.
        let reader = client(&federation, &c).open("edge-data").await.unwrap();
        assert_eq!(
            read(&reader, 1 << 20, 4096).await.unwrap(),
            &expected[1 << 20..(1 << 20) + 4096]
        );
        let denied = write(&reader, 0, Bytes::from(vec![0u8; 4096])).await;
        assert!(
            matches!(denied, Err(LinkError::Io { errno: 1, .. })),
            "{denied:?}"
        );
    });

    // What went through the gateway is in the volume: a central NBD client reads it.
    let uri = federation
        .tether_ok(&[
            "volume",
            "attach",
            "edge-data",
            "--nbd",
            &format!("unix:{}", federation.dir().join("edge.sock").display()),
        ])
        .unwrap();
    let copied = federation.dir().join("edge.raw");
    nbdcopy_out(uri.trim(), &copied).unwrap();
    assert_eq!(
        file_hash(&copied, length as u64).unwrap(),
        blake3::hash(&expected)
    );
    federation
        .tether_ok(&["volume", "detach", "edge-data"])
        .unwrap();

    // A removed grant ends the open stream, and a removed satellite its
    // session, within 5 s.
    runtime.block_on(async {
        let reader = client(&federation, &c).open("edge-data").await.unwrap();
        let writer = client(&federation, &a).open("edge-data").await.unwrap();
        read(&reader, 0, 4096).await.unwrap();
        read(&writer, 0, 4096).await.unwrap();
        federation
            .tether_ok(&["grant", "remove", "sat-c", "--volume", "edge-data"])
            .unwrap();
        let removed = Instant::now();
        loop {
            match read(&reader, 0, 4096).await {
                Ok(_) => assert!(
                    removed.elapsed() < Duration::from_secs(5),
                    "still reading 5 s after the grant went"
                ),
                Err(err) => {
                    assert!(
                        matches!(
                            err,
                            LinkError::Refused {
                                code: refusal::NOT_GRANTED,
                                ..
                            }
                        ),
                        "{err}"
                    );
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        federation
            .tether_ok(&["cluster", "remove", "sat-a"])
            .unwrap();
        let removed = Instant::now();
        loop {
            match read(&writer, 0, 4096).await {
                Ok(_) => assert!(
                    removed.elapsed() < Duration::from_secs(5),
                    "still reading 5 s after removal"
                ),
                Err(err) => {
                    assert!(matches!(err, LinkError::Refused { .. }), "{err}");
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        refused_with(
            client(&federation, &a).open("edge-data").await,
            tether_proto::link::close::REVOKED,
        );
    });
    let logs = federation.gateway_logs();
    assert!(
        logs.contains("refused a volume open"),
        "refusals are logged"
    );
    assert!(logs.contains("closing the session: the satellite no longer stands"));
    federation.assert_copies_identical("edge-data");
}

#[test]
fn the_gateway_takes_only_satellites_of_this_cluster() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "v", "--size", "8MiB"])
        .unwrap();
    let good = federation.satellite("edge");
    federation
        .tether_ok(&["grant", "add", "edge", "--volume", "v"])
        .unwrap();
    let node = federation.issue(&Identity::new("central", Role::Node, "node-1"), None);
    let admin = federation.issue(&Identity::new("central", Role::Admin, "ops"), None);
    let now = std::time::SystemTime::now();
    let expired = federation.issue(
        &Identity::new("central", Role::Satellite, "edge"),
        Some((
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )),
    );
    let foreign_ca =
        CertificateAuthority::load_or_create(&federation.dir().join("foreign-ca"), "central")
            .unwrap();
    let foreign = multicluster_tests::harness::issue_from(
        &foreign_ca,
        &Identity::new("central", Role::Satellite, "edge"),
        None,
        &federation.dir().join("foreign"),
    );
    // Trust the real CA on the client side, so only the gateway's verdict counts.
    std::fs::copy(good.join("ca.crt"), foreign.join("ca.crt")).unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        for (what, credentials) in [
            ("a node's certificate", &node),
            ("an admin's certificate", &admin),
            ("an expired satellite certificate", &expired),
            ("a certificate from another CA", &foreign),
        ] {
            let opened = client(&federation, credentials).open("v").await;
            assert!(opened.is_err(), "{what} got in");
        }
        // Garbage datagrams and a client with no certificate harm nothing.
        let (_, endpoint, _, _) = federation.gateways()[0].clone();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for size in [1usize, 100, 1200, 1500] {
            socket.send_to(&vec![0x5au8; size], &endpoint).unwrap();
        }
        anonymous_handshake(&endpoint, &good.join("ca.crt")).await;
        let volume = client(&federation, &good).open("v").await.unwrap();
        write(&volume, 0, Bytes::from(vec![9u8; 4096]))
            .await
            .unwrap();
        assert_eq!(read(&volume, 0, 4096).await.unwrap(), vec![9u8; 4096]);
    });
    let logs = federation.gateway_logs();
    assert!(
        logs.contains("tether://central/node/node-1 is not a satellite of cluster central"),
        "the refusal names who"
    );
    assert!(logs.contains("tether://central/admin/ops is not a satellite"));
    assert!(
        logs.matches("refused a satellite session").count() >= 4,
        "{logs}"
    );
}

/// A QUIC handshake with no client certificate: refused.
async fn anonymous_handshake(endpoint: &str, ca: &Path) {
    let trust = std::fs::read_to_string(ca).unwrap();
    let rustls = tether_tls::anonymous_client_config(&trust).unwrap();
    let mut rustls = (*rustls).clone();
    rustls.alpn_protocols = vec![tether_proto::link::LINK_ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(rustls).unwrap();
    let mut quic = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    quic.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connecting = quic
        .connect(endpoint.parse().unwrap(), "127.0.0.1")
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        let connection = connecting.await?;
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(b"x").await?;
        let mut buf = [0u8; 1];
        recv.read(&mut buf).await?;
        anyhow::Ok(())
    })
    .await;
    assert!(
        !matches!(outcome, Ok(Ok(()))),
        "an anonymous client was served"
    );
}

#[test]
fn killing_a_gateway_or_the_master_under_load_fails_no_request() {
    let federation = DevFederation::builder().start().unwrap();
    federation
        .tether_ok(&[
            "volume",
            "create",
            "busy",
            "--size",
            "32MiB",
            "--replicas",
            "2",
        ])
        .unwrap();
    let credentials = federation.satellite("edge");
    federation
        .tether_ok(&["grant", "add", "edge", "--volume", "busy"])
        .unwrap();
    let runtime = runtime();
    runtime.block_on(async {
        let volume = client(&federation, &credentials)
            .open("busy")
            .await
            .unwrap();
        let volume = Arc::new(volume);
        // A verifying load: each 64 KiB block written, then read back and compared.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let load = {
            let volume = volume.clone();
            tokio::spawn(async move {
                let mut round = 0u64;
                let mut requests = 0u64;
                while !*stopped.borrow() {
                    for slot in 0..16u64 {
                        let data = block(round * 16 + slot, 64 << 10);
                        let offset = slot * (64 << 10);
                        write(&volume, offset, data.clone())
                            .await
                            .expect("a write failed");
                        let back = read(&volume, offset, 64 << 10)
                            .await
                            .expect("a read failed");
                        assert_eq!(back, data, "read back something else at {offset}");
                        requests += 2;
                    }
                    round += 1;
                }
                requests
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = volume.gateway().await.unwrap();
        let (_, _, pid, _) = federation
            .gateways()
            .into_iter()
            .find(|(_, endpoint, _, _)| *endpoint == before)
            .unwrap();
        federation.kill9(pid as u64);
        // The load moves to the other gateway.
        let deadline = Instant::now() + Duration::from_secs(30);
        while volume.gateway().await.as_deref() == Some(before.as_str()) {
            assert!(Instant::now() < deadline, "never left the killed gateway");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // And through a master failover.
        let view = federation.tether_json(&["volume", "get", "busy"]).unwrap();
        let master = view["master"].as_str().unwrap().to_string();
        federation.kill_node(&master);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let view = federation.tether_json(&["volume", "get", "busy"]).unwrap();
            if view["master"].as_str() != Some(master.as_str()) && view["state"] != "unavailable" {
                break;
            }
            assert!(Instant::now() < deadline, "no failover: {view}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send(true).unwrap();
        let requests = load.await.expect("the load saw no failure");
        assert!(requests > 100, "{requests} requests");
    });
}

#[test]
fn a_satellite_that_breaks_the_protocol_loses_its_session_and_no_one_else_notices() {
    let federation = DevFederation::builder().nodes(1).start().unwrap();
    federation
        .tether_ok(&["volume", "create", "shared", "--size", "8MiB"])
        .unwrap();
    let good = federation.satellite("good");
    let bad = federation.satellite("bad");
    for satellite in ["good", "bad"] {
        federation
            .tether_ok(&["grant", "add", satellite, "--volume", "shared"])
            .unwrap();
    }
    let (_, endpoint, _, _) = federation.gateways()[0].clone();
    let runtime = runtime();
    runtime.block_on(async {
        let volume = client(&federation, &good).open("shared").await.unwrap();
        write(&volume, 0, Bytes::from(vec![1u8; 4096]))
            .await
            .unwrap();
        let quic = multicluster_tests::raw_link::endpoint(&bad).unwrap();
        for (what, after_hello) in multicluster_tests::raw_link::violations("shared") {
            let code = multicluster_tests::raw_link::close_code_after(
                &quic,
                &endpoint,
                "shared",
                &after_hello,
            )
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
            assert_eq!(code, tether_proto::link::close::PROTOCOL, "{what}");
            // The good satellite carries on.
            write(&volume, 4096, Bytes::from(vec![2u8; 4096]))
                .await
                .unwrap();
            assert_eq!(read(&volume, 0, 4096).await.unwrap(), vec![1u8; 4096]);
        }
    });
    assert!(federation
        .gateway_logs()
        .contains("protocol violation; ending the session"));
}
