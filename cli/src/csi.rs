//! `tether csi …`: a satellite's CSI services called by hand, as the
//! external-provisioner would (`dev up --satellites N` serves them on
//! `DIR/satellites/NAME/csi.sock`).

use std::path::{Path, PathBuf};

use clap::Subcommand;
use satellite_csi::csi::pb;
use satellite_csi::csi::pb::volume_capability::{access_mode::Mode, AccessMode, AccessType};
use tether_common::size::{format_size, parse_size};

#[derive(clap::Args)]
pub struct CsiArgs {
    /// The CSI socket (default: satellite --satellite's, from DIR/federation.json).
    #[arg(long)]
    socket: Option<PathBuf>,
    #[arg(long, default_value = "satellite-1")]
    satellite: String,
    #[command(subcommand)]
    command: CsiCommand,
}

#[derive(Subcommand)]
enum CsiCommand {
    /// The plugin's name, capabilities, and whether it is ready.
    Info,
    /// CreateVolume with a mount (ext4) or block capability.
    Create {
        name: String,
        #[arg(long, default_value = "1GiB")]
        size: String,
        /// A raw block volume instead of a filesystem.
        #[arg(long)]
        block: bool,
        /// StorageClass parameters (replicas=2, placement=zone=zone-1, encrypted=true).
        #[arg(long = "param", value_parser = key_value)]
        parameters: Vec<(String, String)>,
        /// CSI secrets (encryptionKey=HEX).
        #[arg(long = "secret", value_parser = key_value)]
        secrets: Vec<(String, String)>,
    },
    /// ListVolumes, every page.
    List,
    /// ControllerExpandVolume.
    Expand {
        volume_id: String,
        #[arg(long)]
        size: String,
    },
    /// DeleteVolume.
    Delete { volume_id: String },
    /// Node calls, as kubelet makes them.
    #[command(flatten)]
    Node(crate::csi_node::NodeCommand),
}

pub(crate) fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("{text:?}: expected KEY=VALUE"))
}

fn capability(block: bool) -> pb::VolumeCapability {
    filesystem_capability(block, "ext4", false)
}

/// A single-node capability: raw block, or a filesystem of `fs_type`.
pub(crate) fn filesystem_capability(
    block: bool,
    fs_type: &str,
    read_only: bool,
) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(if block {
            AccessType::Block(Default::default())
        } else {
            AccessType::Mount(pb::volume_capability::MountVolume {
                fs_type: fs_type.into(),
                ..Default::default()
            })
        }),
        access_mode: Some(AccessMode {
            mode: if read_only {
                Mode::SingleNodeReaderOnly
            } else {
                Mode::SingleNodeWriter
            } as i32,
        }),
    }
}

/// The socket of satellite `name` in the dev federation in `dir`.
fn socket_of(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let federation = crate::federation::Federation::load(dir)?
        .ok_or_else(|| anyhow::anyhow!("no federation in {} (give --socket)", dir.display()))?;
    federation
        .satellites
        .iter()
        .find(|satellite| satellite.name == name)
        .and_then(|satellite| satellite.csi_socket.clone())
        .ok_or_else(|| {
            anyhow::anyhow!("satellite {name} serves no CSI socket in {}", dir.display())
        })
}

pub(crate) fn status(err: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", err.code(), err.message())
}

pub fn run(dir: &Path, args: &CsiArgs, json: bool) -> anyhow::Result<()> {
    let socket = match &args.socket {
        Some(socket) => socket.clone(),
        None => socket_of(dir, &args.satellite)?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let channel = satellite_csi::csi::connect(&socket)
            .await
            .map_err(|err| anyhow::anyhow!("cannot reach {}: {err}", socket.display()))?;
        let mut identity = pb::identity_client::IdentityClient::new(channel.clone());
        let mut controller = pb::controller_client::ControllerClient::new(channel.clone());
        let print = |volume: &pb::Volume| -> anyhow::Result<()> {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"volume_id": volume.volume_id, "capacity_bytes": volume.capacity_bytes})
                );
            } else {
                println!(
                    "{}\t{}",
                    volume.volume_id,
                    format_size(volume.capacity_bytes as u64)
                );
            }
            Ok(())
        };
        match &args.command {
            CsiCommand::Info => {
                let info = identity
                    .get_plugin_info(pb::GetPluginInfoRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                let capabilities = identity
                    .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
                    .await
                    .map_err(status)?
                    .into_inner();
                let ready = identity
                    .probe(pb::ProbeRequest {})
                    .await
                    .map_err(status)?
                    .into_inner()
                    .ready;
                println!("plugin:  {} {}", info.name, info.vendor_version);
                println!("ready:   {}", ready.unwrap_or(true));
                let offers: Vec<String> = capabilities
                    .capabilities
                    .iter()
                    .filter_map(|capability| capability.r#type.as_ref())
                    .map(|offered| {
                        use pb::plugin_capability::{service, volume_expansion, Type};
                        match offered {
                            Type::Service(service) => service::Type::try_from(service.r#type)
                                .map_or("unknown".into(), |t| t.as_str_name().to_string()),
                            Type::VolumeExpansion(expansion) => {
                                volume_expansion::Type::try_from(expansion.r#type).map_or(
                                    "unknown".into(),
                                    |t| format!("{} expansion", t.as_str_name()),
                                )
                            }
                        }
                    })
                    .collect();
                println!("offers:  {}", offers.join(", "));
            }
            CsiCommand::Create {
                name,
                size,
                block,
                parameters,
                secrets,
            } => {
                let bytes = parse_size(size)? as i64;
                let volume = controller
                    .create_volume(pb::CreateVolumeRequest {
                        name: name.clone(),
                        capacity_range: Some(pb::CapacityRange {
                            required_bytes: bytes,
                            limit_bytes: 0,
                        }),
                        volume_capabilities: vec![capability(*block)],
                        parameters: parameters.iter().cloned().collect(),
                        secrets: secrets.iter().cloned().collect(),
                        volume_content_source: None,
                    })
                    .await
                    .map_err(status)?
                    .into_inner()
                    .volume
                    .unwrap_or_default();
                print(&volume)?;
            }
            CsiCommand::List => {
                let mut token = String::new();
                loop {
                    let page = controller
                        .list_volumes(pb::ListVolumesRequest {
                            max_entries: 100,
                            starting_token: token.clone(),
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    for entry in &page.entries {
                        print(&entry.volume.clone().unwrap_or_default())?;
                    }
                    if page.next_token.is_empty() {
                        break;
                    }
                    token = page.next_token;
                }
            }
            CsiCommand::Expand { volume_id, size } => {
                let answer = controller
                    .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                        volume_id: volume_id.clone(),
                        capacity_range: Some(pb::CapacityRange {
                            required_bytes: parse_size(size)? as i64,
                            limit_bytes: 0,
                        }),
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print(&pb::Volume {
                    capacity_bytes: answer.capacity_bytes,
                    volume_id: volume_id.clone(),
                    ..Default::default()
                })?;
            }
            CsiCommand::Node(command) => {
                crate::csi_node::run(channel, command, json).await?;
            }
            CsiCommand::Delete { volume_id } => {
                controller
                    .delete_volume(pb::DeleteVolumeRequest {
                        volume_id: volume_id.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status)?;
            }
        }
        anyhow::Ok(())
    })
}
