//! A small blocking client of the admin API. Errors come back as one line.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tether_proto::admin::ErrorBody;

pub struct AdminClient {
    base: String,
    agent: ureq::Agent,
}

impl AdminClient {
    pub fn new(base: &str) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(120))
            .build();
        Self {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
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
