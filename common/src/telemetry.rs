//! Logging and metrics setup, the same in every daemon: JSON lines by default
//! (every line carries the fields of the spans it is in: cluster, node,
//! volume, peer), `pretty` for people; Prometheus metrics on their own
//! address, loopback by default.

use std::net::SocketAddr;
use std::str::FromStr;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::CommonError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = CommonError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            _ => Err(CommonError::BadLogFormat {
                input: input.to_string(),
            }),
        }
    }
}

/// Installs the global tracing subscriber (level from `RUST_LOG`, default
/// `info`). Logs go to stderr. Safe to call twice; the second call is a no-op.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_span_list(true)
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
}

/// Serves Prometheus metrics at `http://addr/metrics`. Call once per process.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), CommonError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
            0.05, 0.1, 0.25, 0.5, 1.0,
        ])
        .map_err(|err| CommonError::Metrics {
            addr: addr.to_string(),
            reason: err.to_string(),
        })?
        .install()
        .map_err(|err| CommonError::Metrics {
            addr: addr.to_string(),
            reason: err.to_string(),
        })
}
