//! A small blocking client of the admin API (HTTPS with the caller's admin
//! certificate). Errors come back as one line.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tether_proto::admin::ErrorBody;

pub struct AdminClient {
    base: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client presenting the credentials in `credentials` (tls.crt,
    /// tls.key, ca.crt), as every https admin API requires.
    pub fn new(base: &str, credentials: Option<&Path>) -> anyhow::Result<Self> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(120));
        if base.starts_with("https://") {
            let Some(dir) = credentials else {
                anyhow::bail!(
                    "the admin API at {base} needs an admin credential: pass --credentials DIR (tls.crt, tls.key, ca.crt; `tether dev up` writes DIR/admin)"
                );
            };
            let credentials = tether_tls::Credentials::load(dir)
                .map_err(|err| anyhow::anyhow!("admin credential: {err}"))?;
            let context = tether_tls::TlsContext::new(&credentials)
                .map_err(|err| anyhow::anyhow!("admin credential: {err}"))?;
            builder = builder.tls_config(context.client_config());
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            agent: builder.build(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn handle(
        &self,
        result: Result<ureq::Response, ureq::Error>,
    ) -> anyhow::Result<ureq::Response> {
        match result {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                match serde_json::from_str::<ErrorBody>(&body) {
                    Ok(error) => anyhow::bail!("{}", error.error),
                    Err(_) => anyhow::bail!("admin API answered {status}: {}", body.trim()),
                }
            }
            Err(ureq::Error::Transport(err)) => anyhow::bail!(
                "cannot reach the admin API at {}: {err} (is the federation up? try `tether dev up`)",
                self.base
            ),
        }
    }

    /// The admin API this client calls (`https://host:port`).
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .handle(self.agent.get(&self.url(path)).call())?
            .into_json()?)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        Ok(self
            .handle(self.agent.post(&self.url(path)).send_json(body))?
            .into_json()?)
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.handle(self.agent.delete(&self.url(path)).call())?;
        Ok(())
    }
}
