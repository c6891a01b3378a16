//! `tether dr …`: volumes' DR links to a paired cluster (`tether cluster
//! link`): link, status, list, promote, failback.

use std::time::{Duration, Instant};

use clap::Subcommand;
use tether_common::size::format_size;
use tether_proto::dr::{DrLinkRequest, DrLinkView, DrPromoteRequest};

use crate::client::AdminClient;

#[derive(Subcommand)]
pub enum DrCommand {
    /// Replicate VOLUME to the paired cluster CLUSTER: the secondary is
    /// created there (same size, its own copies), seeded with the written
    /// chunks, then kept within the RPO by crash-consistent batches.
    Link {
        volume: String,
        #[arg(long)]
        to: String,
        /// The recovery point objective: the secondary is never further behind.
        #[arg(long, default_value = "30s", value_parser = tether_common::size::parse_duration)]
        rpo: Duration,
        /// Copies of the secondary in the peer cluster.
        #[arg(long, default_value_t = 1)]
        replicas: u32,
    },
    /// A link's state: roles, last consistent point, lag, RPO, throughput.
    Status {
        volume: String,
        /// Show it again every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Every DR link of this cluster.
    List,
    /// Make the secondary (this cluster's) the primary. Planned: the
    /// primary drains, ships its last point and becomes the secondary, so
    /// no acknowledged write is lost. --force: without the primary, at the
    /// secondary's last consistent point; the old primary is fenced when it returns.
    Promote {
        volume: String,
        #[arg(long)]
        force: bool,
    },
    /// On the fenced old primary: become the secondary, take only the
    /// chunks that differ, then switch back to primary (planned).
    Failback {
        volume: String,
        /// Show progress until the switch back is done.
        #[arg(long)]
        watch: bool,
    },
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn when(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    format!("{:.1}s ago", now.saturating_sub(unix_ms) as f64 / 1000.0)
}

fn print_status(view: &DrLinkView) {
    println!("volume:            {}", view.volume);
    println!("peer:              {}", view.peer);
    println!(
        "role:              {} (generation {})",
        view.role, view.generation
    );
    println!("link:              {}", view.link_state);
    println!(
        "consistent point:  {} (cut {})",
        view.last_point,
        when(view.last_point_unix_ms)
    );
    println!(
        "lag:               {:.1}s, {}",
        view.lag_seconds,
        format_size(view.lag_bytes)
    );
    println!(
        "RPO:               {}s, {}",
        view.rpo_secs,
        if view.rpo_met { "met" } else { "MISSED" }
    );
    println!(
        "shipped:           {} batches, {} chunks, {} raw, {} on the wire ({:.2}x)",
        view.batches,
        view.extents_shipped,
        format_size(view.bytes_raw),
        format_size(view.bytes_wire),
        view.compression_ratio
    );
    println!("throughput:        {}/s", format_size(view.bytes_per_sec));
    if view.handover_requested {
        println!("handover:          asked for (planned promote)");
    }
    if view.failback_requested {
        println!("failback:          asked for");
    }
    if let Some(error) = &view.error {
        println!("error:             {error}");
    }
}

pub fn run(client: &AdminClient, command: &DrCommand, json: bool) -> anyhow::Result<()> {
    match command {
        DrCommand::Link {
            volume,
            to,
            rpo,
            replicas,
        } => {
            let view: DrLinkView = client.post(
                "/v1/dr/links",
                &DrLinkRequest {
                    volume: volume.clone(),
                    to: to.clone(),
                    rpo_secs: rpo.as_secs().max(1),
                    replicas: *replicas,
                },
            )?;
            if json {
                return print_json(&view);
            }
            println!(
                "{volume} is DR-linked to {to} (RPO {}s): the secondary is created and seeded there; `tether dr status {volume}` shows how far",
                view.rpo_secs
            );
        }
        DrCommand::Status { volume, watch } => loop {
            let view: DrLinkView = client.get(&format!("/v1/dr/links/{volume}"))?;
            if json {
                print_json(&view)?;
            } else {
                print_status(&view);
            }
            if !watch {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
            println!();
        },
        DrCommand::List => {
            let views: Vec<DrLinkView> = client.get("/v1/dr/links")?;
            if json {
                return print_json(&views);
            }
            println!(
                "{:<20} {:<10} {:<10} {:<11} {:>8} {:>9} {:>6} RPO",
                "VOLUME", "PEER", "ROLE", "LINK", "POINT", "LAG", "GEN"
            );
            for view in views {
                println!(
                    "{:<20} {:<10} {:<10} {:<11} {:>8} {:>8.1}s {:>6} {}s {}",
                    view.volume,
                    view.peer,
                    view.role,
                    view.link_state,
                    view.last_point,
                    view.lag_seconds,
                    view.generation,
                    view.rpo_secs,
                    if view.rpo_met { "met" } else { "MISSED" }
                );
            }
        }
        DrCommand::Promote { volume, force } => {
            let started = Instant::now();
            let view: DrLinkView = client.post(
                &format!("/v1/dr/links/{volume}/promote"),
                &DrPromoteRequest { force: *force },
            )?;
            if json {
                return print_json(&view);
            }
            println!(
                "{volume} is the primary here at generation {} (point {}), {} in {:.2}s",
                view.generation,
                view.last_point,
                if *force {
                    "forced"
                } else {
                    "planned, nothing lost"
                },
                started.elapsed().as_secs_f64()
            );
        }
        DrCommand::Failback { volume, watch } => {
            let view: DrLinkView = client.post(
                &format!("/v1/dr/links/{volume}/failback"),
                &serde_json::json!({}),
            )?;
            if json && !watch {
                return print_json(&view);
            }
            if !watch {
                println!("{volume}: failback asked for; this side takes the differing chunks, then becomes the primary again (`tether dr status {volume}`)");
                return Ok(());
            }
            watch_failback(client, volume, view.generation, json)?;
        }
    }
    Ok(())
}

/// Shows the failback's progress until this side is the primary again.
fn watch_failback(
    client: &AdminClient,
    volume: &str,
    fenced_generation: u64,
    json: bool,
) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    loop {
        let view: DrLinkView = client.get(&format!("/v1/dr/links/{volume}"))?;
        bar.set_message(format!(
            "{} ({}): {} chunks taken, {}",
            view.role,
            view.link_state,
            view.extents_shipped,
            format_size(view.bytes_raw)
        ));
        if view.role == "primary" && view.generation > fenced_generation {
            bar.finish_and_clear();
            if json {
                return print_json(&view);
            }
            println!(
                "{volume} failed back: primary here at generation {} after {:.1}s ({} chunks taken)",
                view.generation,
                started.elapsed().as_secs_f64(),
                view.extents_shipped
            );
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(3600) {
            anyhow::bail!(
                "{volume}: failback not done after an hour ({})",
                view.link_state
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
