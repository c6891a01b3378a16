//! `tether csi stage|publish|unpublish|unstage|stats|node-expand|node-info`:
//! a satellite's CSI node service called by hand, with the arguments
//! kubelet would pass.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use satellite_csi::csi::pb;
use tether_common::size::format_size;
use tonic::transport::Channel;

use crate::csi::{filesystem_capability, key_value, status};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// NodeStageVolume: the volume as a device on this host, with a
    /// filesystem (made only if it holds none) mounted at PATH.
    Stage {
        volume_id: String,
        path: PathBuf,
        /// Raw block: a loop device, nothing mounted.
        #[arg(long)]
        block: bool,
        #[arg(long, default_value = "ext4")]
        fs: String,
        #[arg(long)]
        read_only: bool,
        /// CSI secrets (encryptionKey=HEX for an encrypted volume).
        #[arg(long = "secret", value_parser = key_value)]
        secrets: Vec<(String, String)>,
    },
    /// NodePublishVolume: bind-mounts the staged volume at TARGET.
    Publish {
        volume_id: String,
        /// Where it was staged.
        #[arg(long)]
        staging: PathBuf,
        target: PathBuf,
        #[arg(long)]
        block: bool,
        #[arg(long, default_value = "ext4")]
        fs: String,
        #[arg(long)]
        read_only: bool,
    },
    /// NodeUnpublishVolume.
    Unpublish { volume_id: String, target: PathBuf },
    /// NodeUnstageVolume.
    Unstage { volume_id: String, path: PathBuf },
    /// NodeGetVolumeStats of the volume at PATH (its staging or a target).
    Stats { volume_id: String, path: PathBuf },
    /// NodeExpandVolume: grows the filesystem to the volume's new size.
    NodeExpand { volume_id: String, path: PathBuf },
    /// NodeGetInfo and NodeGetCapabilities.
    NodeInfo,
}

fn text(path: &Path) -> String {
    path.display().to_string()
}

pub async fn run(channel: Channel, command: &NodeCommand, json: bool) -> anyhow::Result<()> {
    let mut node = pb::node_client::NodeClient::new(channel);
    match command {
        NodeCommand::Stage {
            volume_id,
            path,
            block,
            fs,
            read_only,
            secrets,
        } => {
            node.node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: text(path),
                volume_capability: Some(filesystem_capability(*block, fs, *read_only)),
                secrets: secrets.iter().cloned().collect(),
                ..Default::default()
            })
            .await
            .map_err(status)?;
        }
        NodeCommand::Publish {
            volume_id,
            staging,
            target,
            block,
            fs,
            read_only,
        } => {
            node.node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: text(staging),
                target_path: text(target),
                volume_capability: Some(filesystem_capability(*block, fs, false)),
                readonly: *read_only,
                ..Default::default()
            })
            .await
            .map_err(status)?;
        }
        NodeCommand::Unpublish { volume_id, target } => {
            node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: volume_id.clone(),
                target_path: text(target),
            })
            .await
            .map_err(status)?;
        }
        NodeCommand::Unstage { volume_id, path } => {
            node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: volume_id.clone(),
                staging_target_path: text(path),
            })
            .await
            .map_err(status)?;
        }
        NodeCommand::Stats { volume_id, path } => {
            let answer = node
                .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                    volume_id: volume_id.clone(),
                    volume_path: text(path),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            let condition = answer.volume_condition.unwrap_or_default();
            if json {
                let usage: Vec<serde_json::Value> = answer
                    .usage
                    .iter()
                    .map(|usage| {
                        serde_json::json!({
                            "unit": pb::volume_usage::Unit::try_from(usage.unit)
                                .map_or("UNKNOWN", |unit| unit.as_str_name()),
                            "total": usage.total,
                            "used": usage.used,
                            "available": usage.available,
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "usage": usage,
                        "abnormal": condition.abnormal,
                        "message": condition.message,
                    })
                );
                return Ok(());
            }
            for usage in &answer.usage {
                let bytes = usage.unit == pb::volume_usage::Unit::Bytes as i32;
                let show = |n: i64| {
                    if bytes {
                        format_size(n.max(0) as u64)
                    } else {
                        n.to_string()
                    }
                };
                println!(
                    "{:<7} total {}  used {}  available {}",
                    if bytes { "bytes" } else { "inodes" },
                    show(usage.total),
                    show(usage.used),
                    show(usage.available)
                );
            }
            println!(
                "condition: {} ({})",
                if condition.abnormal {
                    "ABNORMAL"
                } else {
                    "normal"
                },
                condition.message
            );
        }
        NodeCommand::NodeExpand { volume_id, path } => {
            let answer = node
                .node_expand_volume(pb::NodeExpandVolumeRequest {
                    volume_id: volume_id.clone(),
                    volume_path: text(path),
                    ..Default::default()
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{volume_id}\t{}", format_size(answer.capacity_bytes as u64));
        }
        NodeCommand::NodeInfo => {
            let info = node
                .node_get_info(pb::NodeGetInfoRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let capabilities = node
                .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let names: Vec<&str> = capabilities
                .capabilities
                .iter()
                .filter_map(|capability| match &capability.r#type {
                    Some(pb::node_service_capability::Type::Rpc(rpc)) => {
                        pb::node_service_capability::rpc::Type::try_from(rpc.r#type)
                            .ok()
                            .map(|rpc| rpc.as_str_name())
                    }
                    None => None,
                })
                .collect();
            println!("node:        {}", info.node_id);
            println!("max volumes: {}", info.max_volumes_per_node);
            println!("offers:      {}", names.join(", "));
        }
    }
    Ok(())
}
