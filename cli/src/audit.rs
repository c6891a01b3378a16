//! `tether audit list`: the registry's audit log of admin actions, and
//! whether its hash chain is intact (exit status 1 when it is not).

use std::time::Duration;

use clap::Subcommand;
use tether_proto::audit::AuditList;

use crate::client::AdminClient;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Admin actions, oldest first: who (certificate identity), what, when,
    /// outcome. Checks the chain of hashes over every retained entry.
    List {
        /// Only actions this recent (`90s`, `15m`, `2h`, `7d`).
        #[arg(long, value_parser = tether_common::size::parse_duration)]
        since: Option<Duration>,
    },
}

fn utc(unix_ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix_ms.to_string())
}

pub fn run(client: &AdminClient, command: &AuditCommand, json: bool) -> anyhow::Result<()> {
    let AuditCommand::List { since } = *command;
    let since_unix_ms = since.map_or(0, |since| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(since).as_millis() as u64
    });
    let listed: AuditList = client.get(&format!("/v1/audit?since_unix_ms={since_unix_ms}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        println!(
            "{:<6} {:<24} {:<36} {:<40} {:<30} OUTCOME",
            "SEQ", "TIME", "WHO", "ACTION", "TARGET"
        );
        for entry in &listed.entries {
            println!(
                "{:<6} {:<24} {:<36} {:<40} {:<30} {}",
                entry.seq,
                utc(entry.record.at_unix_ms),
                entry.record.identity,
                entry.record.action,
                entry.record.target,
                entry.record.outcome
            );
        }
    }
    if listed.omitted > 0 {
        eprintln!(
            "{} older entries not shown (at most {} are): narrow with --since",
            listed.omitted,
            tether_proto::audit::MAX_LISTED
        );
    }
    match &listed.broken {
        None => {
            eprintln!("audit chain intact");
            Ok(())
        }
        Some(broken) => anyhow::bail!("the audit log was tampered with: {broken}"),
    }
}
