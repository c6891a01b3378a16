//! What every Tether binary shares: [`telemetry`] (JSON logs, Prometheus
//! metrics), [`size`] (Kubernetes quantities like "10Gi", and "2s"), [`protected`] (the
//! directories no client-chosen path may reach into) and [`limits`] (byte
//! budgets, accept backoff and connection caps for every listener),
//! [`block_zstd`] (zstd per block on the federation link, both ends) and
//! [`udp`] (QUIC sockets with buffers that absorb bursts).

pub mod block_zstd;
pub mod dr_stream;
pub mod limits;
pub mod protected;
pub mod size;
pub mod telemetry;
pub mod udp;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CommonError {
    #[error("{input:?} is not a size (Kubernetes quantities: 512Mi, 10Gi, 1.5Ti, 10G = 10^9, or a number of bytes)")]
    BadSize { input: String },
    #[error("{input:?} is not a whole number of bytes")]
    FractionalSize { input: String },
    #[error("{input:?} is not a duration (try 500ms, 2s, 10m or 1h)")]
    BadDuration { input: String },
    #[error("{input:?} is not a log format (json or pretty)")]
    BadLogFormat { input: String },
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics { addr: String, reason: String },
}

/// Resolves on SIGTERM or SIGINT: how every daemon learns to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
