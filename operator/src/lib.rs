//! `tether-operator`: Tether in Kubernetes' own terms. Operators declare
//! satellites, grants and DR links as resources ([`crd`]); the operator
//! reconciles each into the registry's gRPC admin API ([`reconcile`], no
//! Kubernetes in it) and writes status conditions back ([`controller`]).
//!
//! Read first: [`crd`], then [`reconcile`].

pub mod controller;
pub mod crd;
pub mod reconcile;

/// Why a reconcile did not finish; each names the call that failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("registry call {call} failed ({code:?}): {message}")]
    Registry {
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}
