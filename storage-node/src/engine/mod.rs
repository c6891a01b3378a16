//! The block engine: a pool of thin-provisioned volumes, each a sparse data
//! file with a live hash list. Start at [`Pool`] and [`Volume`].

mod io;
mod meta;
mod pool;
mod volume;

pub use io::{IoBackendKind, IoEngine};
pub use meta::{VolumeMeta, DEFAULT_CHUNK_SIZE};
pub use pool::Pool;
pub use volume::{Volume, VolumeOptions, VolumeStats};
