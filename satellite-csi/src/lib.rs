//! The satellite side of the federation. Today: [`link`], the client that
//! opens a central volume through any of the cluster's gateways over
//! mutual-TLS QUIC and runs block requests on it, moving to another gateway
//! when one goes away (requests in flight are sent again, the same bytes to
//! the same offset: the caller sees a pause, not an error). The satellite
//! daemon and its CSI services build on it.

mod error;
pub mod link;

pub use error::LinkError;
pub use link::{LinkClient, RemoteVolume, VolumeRequest};
