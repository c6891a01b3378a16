//! The end-to-end harness: [`harness::DevFederation`] starts a federation
//! with the real `tether` binary (`tether dev up`) in a temporary directory
//! and stops it on drop; [`clients`] runs the real NBD clients (qemu-io,
//! nbdcopy, nbdinfo, fio) against it; [`raw_nbd`] speaks NBD over a raw
//! socket, and [`raw_link`] the federation link over QUIC, for what no
//! well-behaved client sends.
//!
//! The `tether` binary is found through `TETHER_BIN`, else next to the test
//! executable (`target/<profile>/tether`; `scripts/test.sh` builds it first,
//! as `cargo test` alone does not).

pub mod clients;
pub mod csi;
pub mod dr;
pub mod faults;
pub mod harness;
pub mod link_shaper;
pub mod raw_link;
pub mod raw_nbd;
