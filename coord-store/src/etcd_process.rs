//! Starts a local etcd on loopback, one member or several, for tests and
//! `tether dev up`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tether_tls::TlsContext;

use crate::{CoordStore, EtcdStore, Result, StoreError};

/// Mutual TLS for a local etcd: its own certificate and key, the CA it
/// trusts for clients and its peer, and the credentials this process
/// connects with to check it is up.
#[derive(Clone)]
pub struct EtcdTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub trusted_ca_file: PathBuf,
    pub client: Arc<TlsContext>,
}

/// How long a fresh etcd gets to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running etcd. Killed on drop unless [`EtcdProcess::detach`]ed.
pub struct EtcdProcess {
    child: Option<Child>,
    pub pid: u32,
    pub client_port: u16,
    pub peer_port: u16,
    pub endpoint: String,
    pub data_dir: PathBuf,
    tls: Option<Arc<TlsContext>>,
}

/// Starts of one etcd on free ports before a port collision is an error.
const START_ATTEMPTS: usize = 3;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0 works")
}

/// The `etcd` binary on PATH, if there is one.
pub fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// One member of a local etcd cluster to start.
#[derive(Debug, Clone)]
pub struct EtcdMemberSpec {
    /// The member's name (the first member of a dev cluster is `tether`).
    pub name: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    /// The address it listens on (client and peer ports): 127.0.0.1 unless
    /// its clients are in other network namespaces.
    pub host: String,
}

impl EtcdMemberSpec {
    /// Member `index` (0-based) of a local cluster on 127.0.0.1, on free ports unless given.
    pub fn local(
        index: usize,
        data_dir: PathBuf,
        log_path: PathBuf,
        ports: Option<(u16, u16)>,
    ) -> Self {
        let (client_port, peer_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
        Self {
            name: if index == 0 {
                "tether".into()
            } else {
                format!("tether-{}", index + 1)
            },
            data_dir,
            log_path,
            client_port,
            peer_port,
            host: "127.0.0.1".into(),
        }
    }
}

impl EtcdProcess {
    /// Starts etcd with its data in `data_dir` and its log in `log_path`, on
    /// the given ports (or free ones), with mutual TLS on its client and peer
    /// ports when `tls` is given, and waits until it answers.
    pub async fn start(
        data_dir: &Path,
        log_path: &Path,
        ports: Option<(u16, u16)>,
        tls: Option<EtcdTls>,
    ) -> Result<Self> {
        // A port free a moment ago can be taken before etcd binds it (tests
        // start etcds side by side): on free ports, try again with new ones.
        let mut attempt = 1;
        loop {
            let spec =
                EtcdMemberSpec::local(0, data_dir.to_path_buf(), log_path.to_path_buf(), ports);
            match Self::start_cluster(&[spec], tls.clone()).await {
                Ok(mut members) => return Ok(members.remove(0)),
                Err(StoreError::EtcdProcess { reason })
                    if ports.is_none()
                        && attempt < START_ATTEMPTS
                        && reason.contains("address already in use") =>
                {
                    let _ = std::fs::remove_dir_all(data_dir);
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Starts every member of one cluster (they find each other on their
    /// peer ports) and waits until each answers.
    pub async fn start_cluster(
        members: &[EtcdMemberSpec],
        tls: Option<EtcdTls>,
    ) -> Result<Vec<Self>> {
        let etcd = find_etcd().ok_or_else(|| StoreError::EtcdProcess {
            reason: "no `etcd` on PATH (Debian: apt-get install etcd-server)".into(),
        })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let initial_cluster = members
            .iter()
            .map(|member| {
                format!(
                    "{}={scheme}://{}:{}",
                    member.name, member.host, member.peer_port
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut started = Vec::new();
        for member in members {
            started.push(Self::spawn(&etcd, member, &initial_cluster, tls.as_ref())?);
        }
        for (process, member) in started.iter_mut().zip(members) {
            process.wait_ready(&member.log_path).await?;
        }
        Ok(started)
    }

    fn spawn(
        etcd: &Path,
        member: &EtcdMemberSpec,
        initial_cluster: &str,
        tls: Option<&EtcdTls>,
    ) -> Result<Self> {
        let (data_dir, log_path) = (&member.data_dir, &member.log_path);
        let (client_port, peer_port) = (member.client_port, member.peer_port);
        std::fs::create_dir_all(data_dir).map_err(|err| StoreError::EtcdProcess {
            reason: format!("creating {}: {err}", data_dir.display()),
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|err| StoreError::EtcdProcess {
                reason: format!("opening {}: {err}", log_path.display()),
            })?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://{}:{client_port}", member.host);
        let peer_url = format!("{scheme}://{}:{peer_port}", member.host);
        let mut command = Command::new(etcd);
        if let Some(tls) = tls {
            let (cert, key, ca) = (
                tls.cert_file.display(),
                tls.key_file.display(),
                tls.trusted_ca_file.display(),
            );
            command
                .arg(format!("--cert-file={cert}"))
                .arg(format!("--key-file={key}"))
                .arg(format!("--trusted-ca-file={ca}"))
                .arg("--client-cert-auth")
                .arg(format!("--peer-cert-file={cert}"))
                .arg(format!("--peer-key-file={key}"))
                .arg(format!("--peer-trusted-ca-file={ca}"))
                .arg("--peer-client-cert-auth");
        }
        command
            .arg(format!("--name={}", member.name))
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle clones"))
            .stderr(log);
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0); // not killed by the terminal's Ctrl-C aimed at `tether`
        }
        let child = command.spawn().map_err(|err| StoreError::EtcdProcess {
            reason: format!("spawning etcd: {err}"),
        })?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
            client_port,
            peer_port,
            endpoint: client_url,
            data_dir: data_dir.to_path_buf(),
            tls: tls.map(|tls| tls.client.clone()),
        })
    }

    async fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(log_path).unwrap_or_default();
                    let last = log
                        .lines()
                        .rev()
                        .find(|line| !line.trim().is_empty())
                        .unwrap_or("");
                    return Err(StoreError::EtcdProcess {
                        reason: format!(
                            "etcd exited with {status}: {last} (log: {})",
                            log_path.display()
                        ),
                    });
                }
            }
            if let Ok(store) =
                EtcdStore::connect(std::slice::from_ref(&self.endpoint), self.tls.clone()).await
            {
                if store.get("/tether/ready-probe").await.is_ok() {
                    return Ok(());
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(StoreError::EtcdProcess {
                    reason: format!(
                        "etcd at {} not ready after {READY_TIMEOUT:?}; see {}",
                        self.endpoint,
                        log_path.display()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leaves etcd running after this handle is dropped.
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

impl Drop for EtcdProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
