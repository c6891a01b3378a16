//! The satellite daemon: joins the central cluster once (its own key, a
//! CSR and the one-time token), then follows its attachments and serves each
//! as a local NBD export whose I/O goes through the gateways. It only dials
//! out: the registry is asked (a long poll) what to present, and told what
//! is served, which is what an attach `--from` this satellite waits for.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nbd_export::{BlockOp, Export, Failure, NbdContext, NbdServer};
use tether_proto::admin::{
    CertificateResponse, EndpointFailure, PresentingStatus, ServingEndpoint,
};
use tether_proto::federation::{SatelliteAttachments, SatelliteJoinRequest, SatellitePresenting};
use tether_tls::{Credentials, Identity, KeyAndRequest, Role, TlsContext};

use crate::link::{LinkClient, RemoteVolume};
use crate::LinkError;

/// How long a satellite keeps trying to reach the registry to join.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Longer than the registry's long poll (25 s).
const POLL_TIMEOUT: Duration = Duration::from_secs(40);

/// Flags of `tether-satellite` (and `tether daemon satellite`).
#[derive(Debug, Clone, clap::Args)]
pub struct SatelliteArgs {
    /// The central cluster this satellite uses.
    #[arg(long, default_value = "central")]
    pub cluster: String,
    /// This satellite's name, as `tether cluster add-satellite` was given it.
    #[arg(long)]
    pub name: String,
    /// The central registry's admin API (https://host:port).
    #[arg(long)]
    pub registry: String,
    /// The gateways' QUIC endpoints (host:port), comma-separated; tried in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub gateway: Vec<String>,
    /// Where the satellite keeps its credential (`tls/`).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The join token (the first start only).
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The central CA's certificate, to check the registry's when joining.
    #[arg(long)]
    pub trust_ca: Option<PathBuf>,
}

/// The satellite's credential: from `state_dir/tls` when it names this
/// satellite and is valid, else by joining.
async fn establish(args: &SatelliteArgs) -> anyhow::Result<Arc<TlsContext>> {
    let tls_dir = args.state_dir.join("tls");
    let identity = Identity::new(&args.cluster, Role::Satellite, &args.name);
    if let Ok(credentials) = Credentials::load(&tls_dir) {
        let (_, not_after) = credentials.validity()?;
        if credentials.identity == identity && not_after > SystemTime::now() {
            return Ok(TlsContext::new(&credentials)?);
        }
    }
    let token = match &args.join_token_file {
        Some(file) => std::fs::read_to_string(file)?.trim().to_string(),
        None => anyhow::bail!(
            "satellite {} has no credential in {} and cannot join without --join-token-file",
            args.name,
            tls_dir.display()
        ),
    };
    let trust = match &args.trust_ca {
        Some(file) => std::fs::read_to_string(file)?,
        None => anyhow::bail!("joining needs --trust-ca (the central CA's certificate)"),
    };
    let request = KeyAndRequest::new(&identity)?;
    let body = SatelliteJoinRequest {
        name: args.name.clone(),
        token,
        csr_pem: request.csr_pem,
    };
    let client = tether_tls::anonymous_client_config(&trust)?;
    let started = std::time::Instant::now();
    let answer: CertificateResponse = loop {
        match tether_tls::client::post_json(
            &args.registry,
            "/v1/satellites/join",
            client.clone(),
            &body,
        )
        .await
        {
            Ok(answer) => break answer,
            Err(tether_tls::client::CallError::Unreachable(reason))
                if started.elapsed() < JOIN_PATIENCE =>
            {
                tracing::debug!(%reason, "registry not reachable yet");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(err) => anyhow::bail!("joining through {}: {err}", args.registry),
        }
    };
    let credentials = Credentials {
        identity,
        chain_pem: answer.chain_pem,
        key_pem: request.key_pem,
        trust_pem: answer.trust_pem,
    };
    credentials.save(&tls_dir)?;
    tracing::info!("joined the federation; got this satellite's certificate");
    Ok(TlsContext::new(&credentials)?)
}

/// A volume opened through the gateways, as the NBD server sees it. An
/// encrypted one is encrypted and decrypted here, with the data key the
/// registry handed this satellite: gateways and central nodes see
/// ciphertext only.
struct SatelliteVolume {
    remote: Arc<RemoteVolume>,
    cipher: Option<volume_crypto::SectorCipher>,
}

fn failure(err: impl std::fmt::Display, errno: u32) -> Failure {
    Failure {
        errno,
        out_of_range: false,
        message: err.to_string(),
    }
}

const EINVAL: u32 = 22;

impl SatelliteVolume {
    async fn run(&self, op: BlockOp) -> Result<Option<Vec<u8>>, Failure> {
        match self.remote.execute(op).await {
            Ok(data) => Ok(data.map(|data| data.to_vec())),
            Err(err) => {
                let errno = match &err {
                    LinkError::Io { errno, .. } => *errno,
                    _ => 5,
                };
                Err(failure(err, errno))
            }
        }
    }
}

impl Export for SatelliteVolume {
    fn name(&self) -> &str {
        self.remote.name()
    }

    fn size_bytes(&self) -> u64 {
        self.remote.welcome().size_bytes
    }

    fn min_block_bytes(&self) -> u32 {
        self.remote.welcome().min_block_bytes.max(1)
    }

    async fn execute(&self, op: BlockOp) -> Result<Option<Vec<u8>>, Failure> {
        let Some(cipher) = &self.cipher else {
            return self.run(op).await;
        };
        use volume_crypto::SectorCipher;
        match op {
            BlockOp::Read { offset, length } => {
                SectorCipher::check_aligned(offset, length as u64)
                    .map_err(|e| failure(e, EINVAL))?;
                let mut data = self
                    .run(BlockOp::Read { offset, length })
                    .await?
                    .unwrap_or_default();
                cipher
                    .decrypt(offset, &mut data)
                    .map_err(|e| failure(e, EINVAL))?;
                Ok(Some(data))
            }
            BlockOp::Write { offset, data, fua } => {
                let mut sealed = data.to_vec();
                cipher
                    .encrypt(offset, &mut sealed)
                    .map_err(|e| failure(e, EINVAL))?;
                self.run(BlockOp::Write {
                    offset,
                    data: sealed.into(),
                    fua,
                })
                .await
            }
            BlockOp::WriteZeroes { offset, length, .. } => {
                // Zero ciphertext sectors read back as zeros (see volume_crypto).
                SectorCipher::check_aligned(offset, length).map_err(|e| failure(e, EINVAL))?;
                self.run(op).await
            }
            BlockOp::Flush => self.run(op).await,
        }
    }
}

/// The export of `volume`: never an encrypted one without its key (the
/// client would read ciphertext and write plaintext).
fn export(
    volume: &str,
    remote: Arc<RemoteVolume>,
    data_key: Option<String>,
) -> Result<SatelliteVolume, String> {
    let encrypted = remote.welcome().volume_flags & tether_proto::link::VOLUME_ENCRYPTED != 0;
    tracing::info!(%volume, encrypted, key = data_key.is_some(), "opening the export");
    let cipher = match (encrypted, data_key) {
        (false, _) => None,
        (true, None) => {
            return Err(format!(
                "volume {volume} is encrypted and this satellite does not hold its key (attach again with --encrypt-key-file)"
            ))
        }
        (true, Some(hex)) => {
            let key = volume_crypto::DataKey::from_hex(volume, &hex).map_err(|err| err.to_string())?;
            Some(volume_crypto::SectorCipher::new(&key))
        }
    };
    Ok(SatelliteVolume { remote, cipher })
}

/// Runs the satellite until `shutdown` resolves.
pub async fn run(
    args: SatelliteArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use tracing::Instrument;
    let span = tracing::info_span!("satellite", satellite = %args.name);
    run_in_span(args, shutdown).instrument(span).await
}

async fn run_in_span(
    args: SatelliteArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.state_dir)?;
    tether_common::protected::mark(&args.state_dir, "a Tether satellite's state")?;
    let tls = establish(&args).await?;
    let link = LinkClient::new(&tls, args.gateway.clone())?;
    let nbd = NbdContext::new(&tls);
    tracing::info!(gateways = ?args.gateway, "satellite up");
    let mut served: HashMap<(String, String), NbdServer> = HashMap::new();
    let mut volumes: HashMap<String, Arc<RemoteVolume>> = HashMap::new();
    let mut version: Option<String> = None;
    let mut reported: std::collections::HashSet<String> = Default::default();
    tokio::pin!(shutdown);
    loop {
        let path = match &version {
            Some(version) => format!("/v1/satellites/{}/attachments?version={version}", args.name),
            None => format!("/v1/satellites/{}/attachments", args.name),
        };
        let poll = tether_tls::client::get_json::<SatelliteAttachments>(
            &args.registry,
            &path,
            tls.client_config(),
            POLL_TIMEOUT,
        );
        let wanted = tokio::select! {
            _ = &mut shutdown => break,
            answer = poll => match answer {
                Ok(wanted) => wanted,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot ask the registry for this satellite's attachments; retrying");
                    tokio::time::sleep(RETRY_PAUSE * 2).await;
                    continue;
                }
            },
        };
        if version.as_deref() == Some(wanted.version.as_str()) {
            continue;
        }
        let keys: Vec<(String, String)> = wanted
            .attachments
            .iter()
            .map(|attachment| (attachment.volume.clone(), attachment.endpoint.clone()))
            .collect();
        served.retain(|key, _| keys.contains(key));
        volumes.retain(|volume, _| keys.iter().any(|(wanted, _)| wanted == volume));
        let mut failures: HashMap<String, Vec<EndpointFailure>> = HashMap::new();
        for (volume, endpoint) in &keys {
            if served.contains_key(&(volume.clone(), endpoint.clone())) {
                continue;
            }
            let remote = match volumes.get(volume) {
                Some(remote) => Ok(remote.clone()),
                None => link.open(volume).await,
            };
            let data_key = wanted
                .attachments
                .iter()
                .find(|a| a.volume == *volume && a.endpoint == *endpoint)
                .and_then(|a| a.data_key.clone());
            let outcome = match remote {
                Ok(remote) => {
                    volumes.insert(volume.clone(), remote.clone());
                    match export(volume, remote, data_key) {
                        Ok(export) => nbd_export::serve(endpoint, Arc::new(export), nbd.clone())
                            .await
                            .map_err(|err| err.to_string()),
                        Err(reason) => Err(reason),
                    }
                }
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(server) => {
                    tracing::info!(%volume, uri = %server.uri, "serving over NBD");
                    served.insert((volume.clone(), endpoint.clone()), server);
                }
                Err(error) => {
                    tracing::warn!(%volume, %endpoint, %error, "cannot serve the attachment");
                    failures
                        .entry(volume.clone())
                        .or_default()
                        .push(EndpointFailure {
                            endpoint: endpoint.clone(),
                            error,
                        });
                }
            }
        }
        let mut report: HashMap<String, PresentingStatus> = HashMap::new();
        for ((volume, endpoint), server) in &served {
            report
                .entry(volume.clone())
                .or_default()
                .serving
                .push(ServingEndpoint {
                    endpoint: endpoint.clone(),
                    uri: server.uri.clone(),
                });
        }
        for (volume, failed) in failures {
            let status = report.entry(volume).or_default();
            status.errors = failed
                .iter()
                .map(|f| format!("{}: {}", f.endpoint, f.error))
                .collect();
            status.failures = failed;
        }
        // A volume served before and not now is reported with nothing
        // served, so its record does not claim an export that is gone.
        for volume in reported.drain() {
            report.entry(volume).or_default();
        }
        reported.extend(
            report
                .iter()
                .filter(|(_, status)| !status.serving.is_empty() || !status.failures.is_empty())
                .map(|(volume, _)| volume.clone()),
        );
        let body = SatellitePresenting {
            volumes: report
                .into_iter()
                .map(|(volume, mut status)| {
                    status.version = 1;
                    status.node = args.name.clone();
                    (volume, status)
                })
                .collect(),
        };
        let path = format!("/v1/satellites/{}/presenting", args.name);
        match tether_tls::client::post_json::<_, serde_json::Value>(
            &args.registry,
            &path,
            tls.client_config(),
            &body,
        )
        .await
        {
            Ok(_) => version = Some(wanted.version),
            Err(err) => {
                tracing::warn!(error = %err, "cannot report what this satellite serves; retrying")
            }
        }
    }
    tracing::info!("satellite stopping");
    Ok(())
}
