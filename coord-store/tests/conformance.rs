//! One conformance suite, run against the embedded store and a real etcd:
//! revisions, CAS transactions, leases that expire, prefix watches.

use std::sync::Arc;
use std::time::Duration;

use coord_store::etcd_process::{EtcdProcess, EtcdTls};
use coord_store::{
    Compare, CoordStore, EmbeddedStore, EtcdStore, StoreError, Txn, TxnOp, WatchEvent, WatchStream,
};
use tether_tls::{CertificateAuthority, Identity, Role, TlsContext};

async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("a watch event within 10 s")
        .expect("watch stream open")
        .expect("watch event, not an error")
}

async fn revisions_and_prefixes(store: &dyn CoordStore) {
    let first = store.put("/c/a/1", b"one".to_vec(), None).await.unwrap();
    let second = store.put("/c/a/2", b"two".to_vec(), None).await.unwrap();
    store.put("/c/b/1", b"other".to_vec(), None).await.unwrap();
    assert!(second > first, "revisions grow");

    let kv = store.get("/c/a/1").await.unwrap().unwrap();
    assert_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (&b"one"[..], first, first, 1)
    );
    let third = store.put("/c/a/1", b"uno".to_vec(), None).await.unwrap();
    let kv = store.get("/c/a/1").await.unwrap().unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (first, third, 2)
    );

    let (kvs, revision) = store.get_prefix("/c/a/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/c/a/1", "/c/a/2"]);
    assert!(revision >= third);

    assert!(store.delete("/c/a/2").await.unwrap());
    assert!(!store.delete("/c/a/2").await.unwrap());
    assert_eq!(store.get("/c/a/2").await.unwrap(), None);
}

async fn compare_and_swap(store: &dyn CoordStore) {
    // Create-if-absent: mod revision 0 means "does not exist".
    let create = |value: &str| Txn {
        compares: vec![Compare::ModRevision {
            key: "/t/lock".into(),
            revision: 0,
        }],
        success: vec![TxnOp::Put {
            key: "/t/lock".into(),
            value: value.as_bytes().to_vec(),
            lease: None,
        }],
        failure: vec![TxnOp::Get {
            key: "/t/lock".into(),
        }],
    };
    let won = store.txn(create("alice")).await.unwrap();
    assert!(won.succeeded);
    let lost = store.txn(create("bob")).await.unwrap();
    assert!(!lost.succeeded);
    let holder = lost.gets[0].as_ref().unwrap();
    assert_eq!(holder.value, b"alice");
    assert_eq!(holder.mod_revision, won.revision);

    // Swap on the current revision succeeds once; a stale revision fails.
    let swap = |revision: i64| Txn {
        compares: vec![Compare::ModRevision {
            key: "/t/lock".into(),
            revision,
        }],
        success: vec![
            TxnOp::Put {
                key: "/t/lock".into(),
                value: b"carol".to_vec(),
                lease: None,
            },
            TxnOp::Put {
                key: "/t/epoch".into(),
                value: b"2".to_vec(),
                lease: None,
            },
        ],
        failure: vec![],
    };
    let swapped = store.txn(swap(won.revision)).await.unwrap();
    assert!(swapped.succeeded);
    assert!(!store.txn(swap(won.revision)).await.unwrap().succeeded);
    // Both puts of one transaction share its revision.
    let lock = store.get("/t/lock").await.unwrap().unwrap();
    let epoch = store.get("/t/epoch").await.unwrap().unwrap();
    assert_eq!(lock.mod_revision, swapped.revision);
    assert_eq!(epoch.mod_revision, swapped.revision);

    let by_value = Txn {
        compares: vec![Compare::Value {
            key: "/t/lock".into(),
            value: b"carol".to_vec(),
        }],
        success: vec![TxnOp::Delete {
            key: "/t/lock".into(),
        }],
        failure: vec![],
    };
    assert!(store.txn(by_value.clone()).await.unwrap().succeeded);
    assert!(
        !store.txn(by_value).await.unwrap().succeeded,
        "value compare on a missing key fails"
    );

    // A lock released only by the lease that holds it.
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap().id;
    store
        .put("/t/held", b"dave".to_vec(), Some(lease))
        .await
        .unwrap();
    let release = |lease| Txn {
        compares: vec![
            Compare::Value {
                key: "/t/held".into(),
                value: b"dave".to_vec(),
            },
            Compare::Lease {
                key: "/t/held".into(),
                lease,
            },
        ],
        success: vec![TxnOp::Delete {
            key: "/t/held".into(),
        }],
        failure: vec![],
    };
    assert!(!store.txn(release(lease + 1)).await.unwrap().succeeded);
    assert!(store.get("/t/held").await.unwrap().is_some());
    assert!(store.txn(release(lease)).await.unwrap().succeeded);
    assert!(store.get("/t/held").await.unwrap().is_none());
    let unleased = Txn {
        compares: vec![Compare::Lease {
            key: "/t/epoch".into(),
            lease: 0,
        }],
        ..Default::default()
    };
    assert!(
        store.txn(unleased).await.unwrap().succeeded,
        "an unleased key compares equal to lease 0"
    );
    store.revoke_lease(lease).await.unwrap();
}

async fn leases_expire_and_take_their_keys(store: &dyn CoordStore) {
    // A TTL the store cannot express is refused, not rounded (fencing counts from it).
    for unexpressible in [
        Duration::from_millis(1500),
        Duration::from_millis(3900),
        Duration::ZERO,
    ] {
        assert!(
            matches!(
                store.grant_lease(unexpressible).await,
                Err(StoreError::LeaseTtl { .. })
            ),
            "a lease TTL of {unexpressible:?} was granted"
        );
    }
    let granted = store.grant_lease(Duration::from_secs(1)).await.unwrap();
    // etcd may raise a TTL to its minimum; never lower it.
    assert!(granted.ttl >= Duration::from_secs(1), "{granted:?}");
    let lease = granted.id;
    store
        .put("/l/node", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    assert_eq!(
        store.get("/l/node").await.unwrap().unwrap().lease,
        Some(lease)
    );
    let mut watch = store.watch_prefix("/l/", 0).await.unwrap();

    // Kept alive, the key stays past its TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(store.keep_alive(lease).await.unwrap() >= Duration::from_secs(1));
    }
    assert!(store.get("/l/node").await.unwrap().is_some());

    // Left alone, it expires (etcd may round the TTL up; allow generous time).
    let event = tokio::time::timeout(Duration::from_secs(15), watch.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, WatchEvent::Delete { ref key, .. } if key == "/l/node"),
        "{event:?}"
    );
    assert!(store.get("/l/node").await.unwrap().is_none());
    assert!(matches!(
        store.keep_alive(lease).await,
        Err(StoreError::LeaseExpired { .. })
    ));
    assert!(matches!(
        store.put("/l/late", b"x".to_vec(), Some(lease)).await,
        Err(StoreError::LeaseExpired { .. })
    ));

    // Revoking deletes at once.
    let lease = store.grant_lease(Duration::from_secs(30)).await.unwrap().id;
    assert_eq!(
        store
            .grant_lease(Duration::from_secs(30))
            .await
            .unwrap()
            .ttl,
        Duration::from_secs(30)
    );
    store
        .put("/l/other", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert!(store.get("/l/other").await.unwrap().is_none());
}

async fn watches_see_changes_in_order(store: &dyn CoordStore) {
    let before = store.put("/w/seed", b"0".to_vec(), None).await.unwrap();
    let mut live = store.watch_prefix("/w/", 0).await.unwrap();
    let r1 = store.put("/w/x", b"1".to_vec(), None).await.unwrap();
    store
        .put("/elsewhere", b"ignored".to_vec(), None)
        .await
        .unwrap();
    let r2 = store.put("/w/x", b"2".to_vec(), None).await.unwrap();
    store.delete("/w/x").await.unwrap();

    match next_event(&mut live).await {
        WatchEvent::Put(kv) => assert_eq!(
            (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision),
            ("/w/x", &b"1"[..], r1)
        ),
        other => panic!("{other:?}"),
    }
    match next_event(&mut live).await {
        WatchEvent::Put(kv) => assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"2"[..], r2)),
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(next_event(&mut live).await, WatchEvent::Delete { ref key, .. } if key == "/w/x")
    );

    // A watch from a past revision replays history first.
    let mut replay = store.watch_prefix("/w/", before).await.unwrap();
    let keys: Vec<String> = [
        next_event(&mut replay).await,
        next_event(&mut replay).await,
        next_event(&mut replay).await,
        next_event(&mut replay).await,
    ]
    .iter()
    .map(|event| format!("{}@{}", event.key(), matches!(event, WatchEvent::Put(_))))
    .collect();
    assert_eq!(
        keys,
        ["/w/seed@true", "/w/x@true", "/w/x@true", "/w/x@false"]
    );
}

async fn suite(store: Arc<dyn CoordStore>) {
    revisions_and_prefixes(store.as_ref()).await;
    compare_and_swap(store.as_ref()).await;
    watches_see_changes_in_order(store.as_ref()).await;
    leases_expire_and_take_their_keys(store.as_ref()).await;
}

#[tokio::test]
async fn embedded_store_conforms() {
    suite(Arc::new(EmbeddedStore::in_memory())).await;
}

/// Certificates for an etcd with mutual TLS and a client of it, from one CA in `dir`.
fn etcd_tls(dir: &std::path::Path) -> (EtcdTls, Arc<TlsContext>) {
    let ca = CertificateAuthority::load_or_create(&dir.join("ca"), "test").unwrap();
    let lifetime = Duration::from_secs(3600);
    let server = ca
        .issue_credentials(
            &Identity::new("test", Role::Store, "etcd"),
            &["127.0.0.1".into(), "localhost".into()],
            lifetime,
        )
        .unwrap();
    server.save(&dir.join("etcd-tls")).unwrap();
    let client = ca
        .issue_credentials(&Identity::new("test", Role::Node, "node-1"), &[], lifetime)
        .unwrap();
    let client = TlsContext::new(&client).unwrap();
    let tls = EtcdTls {
        cert_file: dir.join("etcd-tls/tls.crt"),
        key_file: dir.join("etcd-tls/tls.key"),
        trusted_ca_file: dir.join("etcd-tls/ca.crt"),
        client: client.clone(),
    };
    (tls, client)
}

async fn answers(endpoint: &str, tls: Option<Arc<TlsContext>>) -> bool {
    match EtcdStore::connect(&[endpoint.to_string()], tls).await {
        Ok(store) => store.get("/probe").await.is_ok(),
        Err(_) => false,
    }
}

/// etcd as deployments run it: mutual TLS, which refuses plaintext and strangers.
#[tokio::test]
async fn etcd_store_conforms_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, client) = etcd_tls(dir.path());
    let etcd = EtcdProcess::start(
        &dir.path().join("etcd"),
        &dir.path().join("etcd.log"),
        None,
        Some(tls),
    )
    .await
    .expect("etcd starts (install Debian's etcd-server; the README's test command does)");
    assert!(etcd.endpoint.starts_with("https://"));
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), Some(client))
        .await
        .unwrap();
    suite(Arc::new(store)).await;

    let plaintext = etcd.endpoint.replace("https://", "http://");
    assert!(
        !answers(&plaintext, None).await,
        "plaintext client answered"
    );
    let other_dir = tempfile::tempdir().unwrap();
    let (_, stranger) = etcd_tls(other_dir.path());
    assert!(
        !answers(&etcd.endpoint, Some(stranger)).await,
        "a client of another CA answered"
    );
}

#[tokio::test]
async fn etcd_store_conforms_over_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdProcess::start(
        &dir.path().join("etcd"),
        &dir.path().join("etcd.log"),
        None,
        None,
    )
    .await
    .expect("etcd starts (install Debian's etcd-server; the README's test command does)");
    let store = EtcdStore::connect(std::slice::from_ref(&etcd.endpoint), None)
        .await
        .unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn embedded_store_persists_unleased_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.json");
    let revision = {
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .put("/p/volume", b"spec".to_vec(), None)
            .await
            .unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap().id;
        store
            .put("/p/node", b"up".to_vec(), Some(lease))
            .await
            .unwrap()
    };
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.get("/p/volume").await.unwrap().unwrap().value,
        b"spec"
    );
    assert!(
        store.get("/p/node").await.unwrap().is_none(),
        "leased keys die with the process"
    );
    // Revisions only grow, across restarts too: a revision handed out before
    // (here by a leased put, never persisted) is never handed out again.
    let next = store.put("/p/next", b"x".to_vec(), None).await.unwrap();
    assert!(
        next > revision,
        "revision {next} reused after restart (was {revision})"
    );
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap().id;
    let leased = store
        .put("/p/n2", b"y".to_vec(), Some(lease))
        .await
        .unwrap();
    drop(store);
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(store.put("/p/n3", b"z".to_vec(), None).await.unwrap() > leased);
    drop(store);

    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Corrupt { .. })
    ));
}
