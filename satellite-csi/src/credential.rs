//! The satellite's certificate: joined for once with its token and a CSR
//! (its key never leaves it), kept in `state_dir/tls`, and renewed over the
//! registry's gRPC API after two thirds of its lifetime.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_proto::admin::CertificateResponse;
use tether_proto::federation::SatelliteJoinRequest;
use tether_tls::{Credentials, Identity, KeyAndRequest, Role, TlsContext};

use crate::daemon::SatelliteArgs;

/// How long a satellite keeps trying to reach the registry to join.
const JOIN_PATIENCE: Duration = Duration::from_secs(120);
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// The satellite's credential: from `state_dir/tls` when it names this
/// satellite and is valid, else by joining.
pub(crate) async fn establish(args: &SatelliteArgs) -> anyhow::Result<Arc<TlsContext>> {
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

/// Renews the certificate after two thirds of its lifetime, for as long as
/// the satellite runs: the new one is saved before it is used, so a restart
/// picks it up. A failed attempt is logged and retried until it expires.
pub(crate) async fn renew_loop(
    tls: Arc<TlsContext>,
    args: SatelliteArgs,
    client: admin_grpc::Client,
) {
    let tls_dir = args.state_dir.join("tls");
    let due = || {
        Credentials::load(&tls_dir)
            .and_then(|c| c.renew_at())
            .map_err(|e| e.to_string())
    };
    let renew = || {
        let (tls, tls_dir, client) = (tls.clone(), tls_dir.clone(), client.clone());
        async move {
            renew_once(&tls, &tls_dir, client)
                .await
                .map_err(|e| format!("{e:#}"))
        }
    };
    tether_tls::renewal::keep_renewed(tls.clone(), "satellite", due, renew).await;
}

async fn renew_once(
    tls: &Arc<TlsContext>,
    tls_dir: &std::path::Path,
    mut client: admin_grpc::Client,
) -> anyhow::Result<()> {
    let identity = tls.identity().clone();
    let request = KeyAndRequest::new(&identity)?;
    let answer = client
        .renew(admin_grpc::pb::RenewRequest {
            csr_pem: request.csr_pem,
            addresses: vec![],
        })
        .await?
        .into_inner();
    let credentials = Credentials {
        identity,
        chain_pem: answer.chain_pem,
        key_pem: request.key_pem,
        trust_pem: answer.trust_pem,
    };
    credentials.save(tls_dir)?;
    tls.replace(&credentials)?;
    Ok(())
}
