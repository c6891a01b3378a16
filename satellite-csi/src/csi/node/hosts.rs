//! Starting, finding and stopping volume hosts (`tether-volume-host`, one
//! per staged volume; see `crate::volume_host`). A host runs in its own
//! process group, so a signal to the plugin's group, or the plugin's
//! death, leaves it serving; it is found again by its control socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::volume_host::{control, HostConfig, HostReply, HostRequest};

/// How long a new host may take to open its volume (the link waits out a
/// gateway failover) and mount its file.
const START_PATIENCE: Duration = Duration::from_secs(90);
const STOP_PATIENCE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A host's answer to Status.
#[derive(Debug, Clone)]
pub struct HostStatus {
    pub size_bytes: u64,
    pub block_bytes: u32,
    pub pid: u32,
    pub problem: Option<String>,
}

/// The host on `socket`, if one answers there.
pub async fn status(socket: &Path) -> Option<HostStatus> {
    match control::call(socket, &HostRequest::Status).await {
        Ok(HostReply::Status {
            size_bytes,
            block_bytes,
            pid,
            problem,
            ..
        }) => Some(HostStatus {
            size_bytes,
            block_bytes,
            pid,
            problem,
        }),
        _ => None,
    }
}

/// The host of `config.volume`: the running one, or a new one started
/// from `binary` (its log at `log`) once its socket answers.
pub async fn ensure(config: &HostConfig, binary: &Path, log: &Path) -> Result<HostStatus, String> {
    if let Some(running) = status(&config.socket).await {
        return Ok(running);
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|err| format!("host log {}: {err}", log.display()))?;
    let mut child = tokio::process::Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone().map_err(|err| err.to_string())?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(|err| format!("cannot start {}: {err}", binary.display()))?;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("piped");
        let input = serde_json::to_vec(config).expect("a host config serialises");
        stdin
            .write_all(&input)
            .await
            .map_err(|err| format!("handing the volume host its configuration: {err}"))?;
    }
    let started = Instant::now();
    loop {
        if let Some(exit) = child.try_wait().map_err(|err| err.to_string())? {
            return Err(format!(
                "the volume host exited ({exit}): {}",
                last_lines(log, 3)
            ));
        }
        if let Some(running) = status(&config.socket).await {
            // Reap it whenever it ends, so it leaves no zombie behind.
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
            return Ok(running);
        }
        if started.elapsed() > START_PATIENCE {
            let _ = child.start_kill();
            return Err(format!(
                "the volume host did not come up within {} s: {}",
                START_PATIENCE.as_secs(),
                last_lines(log, 3)
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks the host on `socket` to learn the volume's size again.
pub async fn refresh(socket: &Path) -> Result<u64, String> {
    match control::call(socket, &HostRequest::Refresh).await {
        Ok(HostReply::Refreshed { size_bytes }) => Ok(size_bytes),
        Ok(HostReply::Failed { message }) => Err(message),
        Ok(other) => Err(format!("unexpected answer {other:?}")),
        Err(err) => Err(err.to_string()),
    }
}

/// Stops the host on `socket`, if one runs, and waits for it to exit.
pub async fn stop(socket: &Path) -> Result<(), String> {
    let Some(running) = status(socket).await else {
        return Ok(());
    };
    let _ = control::call(socket, &HostRequest::Stop).await;
    let started = Instant::now();
    while alive(running.pid) {
        if started.elapsed() > STOP_PATIENCE {
            return Err(format!(
                "the volume host (pid {}) did not stop within {} s",
                running.pid,
                STOP_PATIENCE.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Kills volume host `pid` (if that process is one) and waits for it to go.
pub fn kill(pid: u32) {
    let is_host = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("tether-volume-host"));
    if !is_host {
        return;
    }
    // SAFETY: a plain signal to a process we checked is a volume host.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let started = Instant::now();
    while alive(pid) && started.elapsed() < STOP_PATIENCE {
        std::thread::sleep(POLL);
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists. A zombie
    // (ours, not yet reaped) counts as gone.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    exists
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(") ")
                .next()
                .is_some_and(|rest| rest.starts_with('Z'))
        })
}

/// The last `count` lines of `log`, for an error message.
fn last_lines(log: &Path, count: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join(" | ")
}

/// Where the `tether-volume-host` binary is: `TETHER_VOLUME_HOST`, else
/// beside the running binary (cargo and the packages put them together).
pub fn default_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TETHER_VOLUME_HOST") {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("tether-volume-host")))
        .unwrap_or_else(|| PathBuf::from("tether-volume-host"))
}
