//! `bench security`: what security costs, one run each, on this machine.
//! - encryption at rest: an encrypted and a plain volume on the same node,
//!   fio 4k random and 1 MiB sequential, alternating which goes first;
//! - mutual TLS on replication: a 2-copy volume, 4k random and 1 MiB
//!   sequential writes with TLS block streams, with both nodes restarted on
//!   the plaintext transport (`--insecure-plaintext-block`), and with TLS
//!   again.

use std::time::Duration;

use multicluster_tests::harness::DevFederation;

use super::{fio, prefill, Measured, Target, Workload, WORKLOADS};

const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(runtime: u64, size: &str, size_bytes: u64, only: &[String]) -> anyhow::Result<()> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|name| name == part);
    if wanted("encryption") {
        encryption_cost(runtime, size, size_bytes)?;
    }
    if wanted("tls") {
        transport_cost(runtime, size, size_bytes)?;
    }
    Ok(())
}

fn attach(federation: &DevFederation, name: &str, extra: &[&str]) -> anyhow::Result<String> {
    let socket = federation.dir().join(format!("{name}.sock"));
    let endpoint = format!("unix:{}", socket.display());
    let mut args = vec!["volume", "attach", name, "--nbd", &endpoint];
    args.extend(extra);
    Ok(federation.tether_ok(&args)?.trim().to_string())
}

/// One table row: the baseline, the secured run, their ratio against `target`.
fn print_row(workload: &Workload, base: &Measured, secured: &Measured, target: f64) {
    let ratio = secured.value / base.value;
    let unit = if workload.iops { "IOPS" } else { "MB/s" };
    let verdict = if ratio >= target { "met" } else { "MISSED" };
    println!(
        "| {} | {:.0} {unit} | {:.0} {unit} | {ratio:.2} | {:.2} / {:.2} | {verdict} |",
        workload.name, base.value, secured.value, base.p99_ms, secured.p99_ms,
    );
}

fn encryption_cost(runtime: u64, size: &str, size_bytes: u64) -> anyhow::Result<()> {
    let federation = DevFederation::builder().nodes(1).start()?;
    let key = federation.dir().join("bench.key");
    multicluster_tests::harness::write_key_file(&key, rand::random::<[u8; 32]>());
    let key_arg = key.to_str().unwrap().to_string();
    let size_arg = format!("{size_bytes}B");
    federation.tether_ok(&["volume", "create", "plain", "--size", &size_arg])?;
    federation.tether_ok(&[
        "volume",
        "create",
        "sealed",
        "--size",
        &size_arg,
        "--encrypt-key-file",
        &key_arg,
    ])?;
    let plain = attach(&federation, "plain", &[])?;
    let sealed = attach(&federation, "sealed", &["--encrypt-key-file", &key_arg])?;
    eprintln!("encryption: prefill ...");
    prefill(&Target::Nbd(&plain), size)?;
    prefill(&Target::Nbd(&sealed), size)?;
    let mut rows: Vec<(Workload, Measured, Measured)> = Vec::new();
    for (index, workload) in WORKLOADS.iter().enumerate() {
        eprintln!("encryption: {} ...", workload.name);
        // Alternate which runs first, so neither always gets the warmer cache.
        let (first, second) = if index % 2 == 0 {
            (&plain, &sealed)
        } else {
            (&sealed, &plain)
        };
        fio(&Target::Nbd(first), *workload, 3, size)?;
        let a = fio(&Target::Nbd(first), *workload, runtime, size)?;
        fio(&Target::Nbd(second), *workload, 3, size)?;
        let b = fio(&Target::Nbd(second), *workload, runtime, size)?;
        let (plain_run, sealed_run) = if index % 2 == 0 { (a, b) } else { (b, a) };
        rows.push((*workload, plain_run, sealed_run));
    }
    println!("\n### Encryption at rest: encrypted vs plain volume ({size} working set, {runtime} s per run)\n");
    println!("| workload | plain | encrypted | encrypted / plain | p99 ms plain / encrypted | target >= 0.85 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (workload, plain_run, sealed_run) in &rows {
        print_row(workload, plain_run, sealed_run, 0.85);
    }
    Ok(())
}

fn transport_cost(runtime: u64, size: &str, size_bytes: u64) -> anyhow::Result<()> {
    let federation = DevFederation::builder().nodes(2).start()?;
    let size_arg = format!("{size_bytes}B");
    federation.tether_ok(&[
        "volume",
        "create",
        "pair",
        "--size",
        &size_arg,
        "--replicas",
        "2",
    ])?;
    let view = federation.wait_in_sync("pair", SYNC_TIMEOUT);
    let presenter = view["master"].as_str().unwrap_or("node-1").to_string();
    let uri = attach(&federation, "pair", &["--node", &presenter])?;
    eprintln!("transport: prefill ...");
    prefill(&Target::Nbd(&uri), size)?;
    let workloads = [WORKLOADS[1], WORKLOADS[3]];
    let measure = |label: &str| -> anyhow::Result<Vec<Measured>> {
        let mut results = Vec::new();
        for workload in workloads {
            eprintln!("transport ({label}): {} ...", workload.name);
            fio(&Target::Nbd(&uri), workload, 3, size)?;
            results.push(fio(&Target::Nbd(&uri), workload, runtime, size)?);
        }
        Ok(results)
    };
    // Every measurement follows an identical restart of both nodes (a
    // restart recovers hash lists and reconnects; neither side should get
    // the warmer start), and TLS is measured before and after plaintext.
    let restart = |plaintext: bool| -> anyhow::Result<()> {
        for node in ["node-1", "node-2"] {
            let mut cmdline = federation.kill_node_gracefully(node);
            cmdline.retain(|arg| arg != "--insecure-plaintext-block");
            if plaintext {
                cmdline.push("--insecure-plaintext-block".into());
            }
            federation.start_node(node, &cmdline);
        }
        federation.wait_in_sync("pair", SYNC_TIMEOUT);
        // The attachment comes back with its node; attaching again waits for it.
        let again = attach(&federation, "pair", &["--node", &presenter])?;
        anyhow::ensure!(again == uri, "the attachment moved: {again}");
        Ok(())
    };
    restart(false)?;
    let tls_before = measure("mutual TLS")?;
    restart(true)?;
    let plaintext = measure("plaintext")?;
    restart(false)?;
    let tls_after = measure("mutual TLS, again")?;
    let tls: Vec<Measured> = tls_before
        .iter()
        .zip(&tls_after)
        .map(|(a, b)| Measured {
            value: (a.value + b.value) / 2.0,
            p99_ms: (a.p99_ms + b.p99_ms) / 2.0,
        })
        .collect();
    println!("\n### Replication transport: mutual TLS vs plaintext, 2 copies ({size} working set, {runtime} s per run)\n");
    println!("| workload | plaintext | mutual TLS (mean of 2) | TLS / plaintext | p99 ms plaintext / TLS | target >= 0.9 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for ((workload, tls_run), plain_run) in workloads.iter().zip(&tls).zip(&plaintext) {
        print_row(workload, plain_run, tls_run, 0.9);
    }
    Ok(())
}
