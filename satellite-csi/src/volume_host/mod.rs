//! A volume host: one process per volume staged by the CSI node plugin.
//! It opens the volume through the gateways and serves it as the file
//! `disk` of a FUSE filesystem (the loop device under the staged
//! filesystem stands on it), and answers its control socket. It runs apart
//! from the node plugin, so a plugin restart (an upgrade, a crash, `kill -9`)
//! does not touch mounted volumes; the plugin finds its hosts again by
//! their control sockets (a host is ready when its socket answers). A host ends when asked to (NodeUnstageVolume) or
//! on SIGTERM, after a flush.

pub mod control;
mod fuse;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use control::{HostReply, HostRequest};
pub use fuse::DISK_FILE;

use crate::link::{LinkClient, RemoteVolume};

/// How long a status check waits for a gateway session.
const REACH_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the host checks that its control socket is still there.
const ORPHAN_CHECK: Duration = Duration::from_secs(5);
/// How often the host looks for a renewed certificate on disk.
const CREDENTIAL_CHECK: Duration = Duration::from_secs(60);

/// What the node plugin hands a host on its standard input (never on disk
/// or in its arguments: it may carry the volume's data key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostConfig {
    pub volume: String,
    pub gateways: Vec<String>,
    /// The satellite's credential directory (the daemon renews it there).
    pub tls_dir: PathBuf,
    /// Where the FUSE filesystem is mounted.
    pub mount_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// An encrypted volume's data key (hex), unwrapped by the plugin.
    #[serde(default)]
    pub data_key: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

/// Runs a host until it is asked to stop or gets SIGTERM.
pub async fn run(config: HostConfig) -> anyhow::Result<()> {
    let credentials = tether_tls::Credentials::load(&config.tls_dir)
        .with_context(|| format!("the satellite's credential in {}", config.tls_dir.display()))?;
    let tls = tether_tls::TlsContext::new(&credentials)?;
    tokio::spawn(follow_renewals(tls.clone(), config.tls_dir.clone()));
    let link = LinkClient::new(&tls, config.gateways.clone())?;
    let remote = link
        .open(&config.volume)
        .await
        .with_context(|| format!("opening volume {} through the gateways", config.volume))?;
    let welcome = remote.welcome();
    let read_only =
        config.read_only || welcome.volume_flags & tether_proto::link::VOLUME_READ_ONLY != 0;
    let volume = Arc::new(
        crate::export::export(&config.volume, remote.clone(), config.data_key.clone())
            .map_err(anyhow::Error::msg)?,
    );
    let size = Arc::new(AtomicU64::new(welcome.size_bytes));

    std::fs::create_dir_all(&config.mount_dir)?;
    // A host that died leaves its mount point dead ("transport endpoint
    // is not connected"): take it down before mounting again.
    let _ = nix_free_umount(&config.mount_dir);
    let filesystem = fuse::DiskFs::new(
        volume,
        size.clone(),
        tokio::runtime::Handle::current(),
        read_only,
        welcome.max_request_bytes,
    );
    let mut options = fuser::Config::default();
    options.mount_options = vec![
        fuser::MountOption::FSName(format!("tether:{}", config.volume)),
        fuser::MountOption::Subtype("tether".into()),
        fuser::MountOption::NoAtime,
    ];
    options.n_threads = Some(2);
    let session = fuser::Session::new(filesystem, &config.mount_dir, &options)
        .with_context(|| format!("mounting FUSE at {}", config.mount_dir.display()))?
        .spawn()?;

    if config.socket.exists() {
        std::fs::remove_file(&config.socket)?;
    }
    let listener = tokio::net::UnixListener::bind(&config.socket)
        .with_context(|| format!("control socket {}", config.socket.display()))?;
    tracing::info!(volume = %config.volume, size_bytes = welcome.size_bytes, mount = %config.mount_dir.display(), "volume host serving");

    let shutdown = tether_common::shutdown_signal();
    tokio::pin!(shutdown);
    let mut orphan_check = tokio::time::interval(ORPHAN_CHECK);
    loop {
        let mut stream = tokio::select! {
            _ = &mut shutdown => break,
            _ = orphan_check.tick() => {
                // The plugin's state directory went away (a test's, or a
                // node wiped): nobody can reach this host any more.
                if !config.socket.exists() {
                    tracing::warn!(volume = %config.volume, socket = %config.socket.display(), "control socket removed; stopping");
                    break;
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    continue;
                }
            },
        };
        let request = match control::read_request(&mut stream).await {
            Ok(request) => request,
            Err(message) => {
                control::write_reply(&mut stream, &HostReply::Failed { message }).await;
                continue;
            }
        };
        let reply = match request {
            HostRequest::Status => status(&config.volume, &link, &remote, &size).await,
            HostRequest::Refresh => match remote.reopen().await {
                Ok(welcome) => {
                    size.store(welcome.size_bytes, Ordering::Release);
                    tracing::info!(volume = %config.volume, size_bytes = welcome.size_bytes, "volume size refreshed");
                    HostReply::Refreshed {
                        size_bytes: welcome.size_bytes,
                    }
                }
                Err(err) => HostReply::Failed {
                    message: err.to_string(),
                },
            },
            HostRequest::Stop => {
                control::write_reply(&mut stream, &HostReply::Stopping).await;
                break;
            }
        };
        control::write_reply(&mut stream, &reply).await;
    }
    tracing::info!(volume = %config.volume, "volume host stopping");
    if let Err(err) = remote.execute(nbd_export::BlockOp::Flush).await {
        tracing::warn!(volume = %config.volume, error = %err, "the last flush failed");
    }
    drop(session);
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

async fn status(
    volume: &str,
    link: &Arc<LinkClient>,
    remote: &Arc<RemoteVolume>,
    size: &AtomicU64,
) -> HostReply {
    let reached = tokio::time::timeout(REACH_TIMEOUT, link.reachable()).await;
    let (gateway, problem) = match reached {
        Ok(Ok(_)) => (remote.gateway().await, None),
        Ok(Err(err)) => (None, Some(err.to_string())),
        Err(_) => (
            None,
            Some(format!(
                "no gateway session within {} s",
                REACH_TIMEOUT.as_secs()
            )),
        ),
    };
    HostReply::Status {
        volume: volume.to_string(),
        size_bytes: size.load(Ordering::Acquire),
        block_bytes: remote.welcome().min_block_bytes.max(512),
        pid: std::process::id(),
        gateway,
        problem,
    }
}

/// Takes up a certificate the satellite daemon renewed on disk, so new
/// sessions present it.
async fn follow_renewals(tls: Arc<tether_tls::TlsContext>, dir: PathBuf) {
    loop {
        tokio::time::sleep(CREDENTIAL_CHECK).await;
        let Ok(credentials) = tether_tls::Credentials::load(&dir) else {
            continue;
        };
        let newer = credentials
            .validity()
            .is_ok_and(|(_, not_after)| not_after > tls.not_after());
        if newer {
            match tls.replace(&credentials) {
                Ok(()) => tracing::info!("took up the satellite's renewed certificate"),
                Err(err) => tracing::warn!(error = %err, "cannot take up the renewed certificate"),
            }
        }
    }
}

/// Detaches whatever is mounted at `dir` (lazily: a dead FUSE mount
/// cannot be unmounted otherwise).
fn nix_free_umount(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
    let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
