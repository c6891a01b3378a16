//! Tether's on-disk formats, with no I/O: a volume's `volume.json`, the
//! header of its `hashes` file and the slots of its activity log. The
//! storage node reads the bytes and hands them here; a damaged file gives
//! [`ProtoError::BadOnDisk`](crate::ProtoError::BadOnDisk) naming the file
//! and the field, and the node quarantines that one copy.

pub mod activity_log;
pub mod hashes;
pub mod meta;

pub use meta::VolumeMeta;
