//! DR on the primary's side: the volume's master tracks the chunks its
//! writes change ([`tracker`]) and ships them, a crash-consistent batch at a
//! time, to a gateway of the peer cluster ([`shipper`]).

pub mod shipper;
pub mod tracker;

pub use tracker::{DrTracker, Extent, Gate, Origin, DR_BLOCK};
