//! The satellite side of the federation. Today: [`link`], the client that
//! opens a central volume through any of the cluster's gateways over
//! mutual-TLS QUIC and runs block requests on it, moving to another gateway
//! when one goes away (requests in flight are sent again, the same bytes to
//! the same offset: the caller sees a pause, not an error); and [`daemon`],
//! which follows the satellite's attachments and serves each as a local NBD
//! export over the link (`tether-satellite`); and [`csi`], the CSI identity
//! and controller services (the node service comes next).

mod credential;
pub mod csi;
pub mod daemon;
mod error;
mod export;
pub mod link;
pub mod volume_host;

pub use error::LinkError;
pub use link::{LinkClient, RemoteVolume};
pub use tether_proto::block::BlockOp;
