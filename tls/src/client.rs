//! Calling the registry's admin API (JSON over HTTPS) from a daemon: a
//! node or a satellite joining, renewing, reporting. ureq on a blocking
//! thread, with the caller's rustls config (its certificate, or none when
//! it has yet to join).

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a call failed: the registry could not be reached (worth retrying
/// while it starts), or it answered with an error (not worth it).
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Refused(String),
}

/// The largest answer read (the admin API's biggest lists are far smaller).
const MAX_ANSWER_BYTES: u64 = 16 << 20;

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

/// `POST base+path` with a JSON body; the JSON answer.
pub async fn post_json<B, T>(
    base: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    body: &B,
) -> Result<T, CallError>
where
    B: Serialize + Clone + Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let body = body.clone();
    call(tls, Duration::from_secs(30), move |agent| {
        agent.post(&url).send_json(&body).map_err(Box::new)
    })
    .await
}

/// `GET base+path`; the JSON answer. `timeout` bounds a long poll.
pub async fn get_json<T>(
    base: &str,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<T, CallError>
where
    T: DeserializeOwned + Send + 'static,
{
    let url = format!("{}{path}", base.trim_end_matches('/'));
    call(tls, timeout, move |agent| {
        agent.get(&url).call().map_err(Box::new)
    })
    .await
}

async fn call<T, F>(
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    send: F,
) -> Result<T, CallError>
where
    T: DeserializeOwned + Send + 'static,
    F: FnOnce(&ureq::Agent) -> Result<ureq::Response, Box<ureq::Error>> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls)
            .timeout(timeout)
            .build();
        match send(&agent).map_err(|err| *err) {
            // Bounded: a peer (a DR peer's registry before it is trusted,
            // say) cannot make the caller read without end.
            Ok(response) => {
                use std::io::Read;
                serde_json::from_reader(response.into_reader().take(MAX_ANSWER_BYTES))
                    .map_err(|err| CallError::Refused(format!("unreadable answer: {err}")))
            }
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let reason = serde_json::from_str::<ErrorBody>(&text)
                    .map(|error| error.error)
                    .unwrap_or(text);
                Err(CallError::Refused(format!("{status}: {reason}")))
            }
            Err(ureq::Error::Transport(err)) => Err(CallError::Unreachable(err.to_string())),
        }
    })
    .await
    .expect("the request thread does not panic")
}
