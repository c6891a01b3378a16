//! Faults under a real NBD client on a satellite: `fio --verify=crc32c`
//! writes through the satellite daemon's export while the gateway carrying
//! its session is killed (-9), and then the volume's master: fio sees no
//! failed request (the satellite moves to the other gateway and sends
//! again what had no answer; the gateway follows the new master), and its
//! verification reads back every block it wrote.

use std::time::{Duration, Instant};

use multicluster_tests::clients::{finish, fio_verify};
use multicluster_tests::harness::DevFederation;

/// Requests gateway `metrics` has run for satellite-1 so far.
fn ops_for_satellite(metrics: &str) -> f64 {
    let Ok(answer) = ureq::get(&format!("http://{metrics}/metrics")).call() else {
        return 0.0;
    };
    answer
        .into_string()
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            line.starts_with("tether_gateway_ops_total")
                && line.contains("satellite=\"satellite-1\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until gateway `metrics` runs requests of satellite-1 beyond `past`.
fn wait_for_traffic(metrics: &str, past: f64, fio: &mut std::process::Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops_for_satellite(metrics) <= past {
        assert!(
            fio.try_wait().unwrap().is_none(),
            "fio ended before {what}: make its run longer"
        );
        assert!(
            Instant::now() < deadline,
            "no traffic through {metrics} for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn verifying_fio_through_a_satellite_survives_a_gateway_and_a_master_killed() {
    let federation = DevFederation::builder()
        .nodes(3)
        .satellites(1)
        .start()
        .unwrap();
    let (_, uri) = federation
        .attach_on_satellite(
            "steady",
            &["--size", "256MiB", "--replicas", "2"],
            "satellite-1",
        )
        .unwrap();
    let gateways: Vec<(u64, String)> = federation.info["clusters"][0]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["pid"].as_u64().unwrap(),
                g["metrics"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(gateways.len(), 2);

    let mut fio = fio_verify(&uri, "0", "160M", 17);
    // The gateway carrying the satellite's requests now, killed mid-run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let carrying = loop {
        if let Some(index) = gateways
            .iter()
            .position(|(_, m)| ops_for_satellite(m) > 0.0)
        {
            break index;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic through either gateway"
        );
        assert!(fio.try_wait().unwrap().is_none(), "fio ended early");
        std::thread::sleep(Duration::from_millis(50));
    };
    federation.kill9(gateways[carrying].0);
    let other = &gateways[1 - carrying].1;
    let before = ops_for_satellite(other);
    wait_for_traffic(other, before, &mut fio, "the gateway kill");

    // Then the volume's master, under the same load.
    let view = federation
        .tether_json(&["volume", "get", "steady"])
        .unwrap();
    let master = view["master"].as_str().unwrap().to_string();
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio ended before the master kill: make its run longer"
    );
    federation.kill_node(&master);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = federation
            .tether_json(&["volume", "get", "steady"])
            .unwrap();
        if view["master"].as_str() != Some(master.as_str()) && view["state"] != "unavailable" {
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {view}");
        std::thread::sleep(Duration::from_millis(100));
    }
    finish(fio, "fio --verify=crc32c through the satellite");
}

#[test]
fn a_satellite_breaking_the_protocol_ends_only_its_session_while_another_verifies() {
    let federation = DevFederation::builder()
        .nodes(1)
        .satellites(1)
        .start()
        .unwrap();
    let (_, uri) = federation
        .attach_on_satellite("neighbour", &["--size", "192MiB"], "satellite-1")
        .unwrap();
    let bad = federation.satellite("bad");
    federation
        .tether_ok(&["grant", "add", "bad", "--volume", "neighbour"])
        .unwrap();
    let mut fio = fio_verify(&uri, "0", "160M", 29);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let quic = multicluster_tests::raw_link::endpoint(&bad).unwrap();
        // On every gateway, so the one carrying satellite-1 gets them too.
        for (_, gateway, _, _) in federation.gateways() {
            for (what, after_hello) in multicluster_tests::raw_link::violations("neighbour") {
                let code = multicluster_tests::raw_link::close_code_after(
                    &quic,
                    &gateway,
                    "neighbour",
                    &after_hello,
                )
                .await
                .unwrap_or_else(|err| panic!("{what}: {err}"));
                assert_eq!(code, tether_proto::link::close::PROTOCOL, "{what}");
            }
        }
    });
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio ended before the violations did: make its run longer"
    );
    finish(fio, "the neighbour's fio --verify=crc32c");
    assert!(federation
        .gateway_logs()
        .contains("protocol violation; ending the session"));
}
