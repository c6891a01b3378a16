//! Keeping a daemon's certificate renewed: at the time the holder says it
//! is due (two thirds of its lifetime, or sooner), for as long as the
//! process runs; a failed attempt is logged and tried again, more often as
//! the certificate nears its expiry.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::TlsContext;

/// Runs until the process ends (or `due` fails: the credential on disk is
/// unreadable). `holder` names it in log lines ("node", "satellite");
/// `renew` gets a new certificate and puts it in place (disk, then `tls`).
pub async fn keep_renewed<Due, Renew, Renewing, Error>(
    tls: Arc<TlsContext>,
    holder: &str,
    mut due: Due,
    mut renew: Renew,
) where
    Due: FnMut() -> Result<SystemTime, Error>,
    Renew: FnMut() -> Renewing,
    Renewing: Future<Output = Result<(), Error>>,
    Error: std::fmt::Display,
{
    loop {
        let at = match due() {
            Ok(at) => at,
            Err(err) => {
                tracing::error!(error = %err, "cannot read this {holder}'s certificate to renew it");
                return;
            }
        };
        if let Ok(wait) = at.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        match renew().await {
            Ok(()) => {
                tracing::info!(not_after = ?tls.not_after(), "renewed this {holder}'s certificate");
                metrics::counter!("tether_certificate_renewals_total").increment(1);
            }
            Err(err) => {
                let left = tls
                    .not_after()
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::error!(error = %err, left_secs = left.as_secs(), "renewing this {holder}'s certificate failed; retrying");
                tokio::time::sleep(
                    (left / 10).clamp(Duration::from_millis(200), Duration::from_secs(30)),
                )
                .await;
            }
        }
    }
}
