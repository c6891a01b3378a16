//! A central volume opened through the gateways, as the satellite's NBD
//! server serves it.

use std::sync::Arc;

use nbd_export::{BlockOp, Export, Failure};

use crate::link::RemoteVolume;
use crate::LinkError;

/// A volume opened through the gateways, as the NBD server sees it. An
/// encrypted one is encrypted and decrypted here, with the data key the
/// registry handed this satellite: gateways and central nodes see
/// ciphertext only.
pub(crate) struct SatelliteVolume {
    remote: Arc<RemoteVolume>,
    cipher: Option<volume_crypto::SectorCipher>,
}

fn failure(err: impl std::fmt::Display, errno: u32) -> Failure {
    Failure {
        errno,
        out_of_range: false,
        message: err.to_string(),
    }
}

const EINVAL: u32 = 22;

impl SatelliteVolume {
    async fn run(&self, op: BlockOp) -> Result<Option<Vec<u8>>, Failure> {
        match self.remote.execute(op).await {
            Ok(data) => Ok(data.map(|data| data.to_vec())),
            Err(err) => {
                let errno = match &err {
                    LinkError::Io { errno, .. } => *errno,
                    _ => 5,
                };
                Err(failure(err, errno))
            }
        }
    }
}

impl Export for SatelliteVolume {
    fn name(&self) -> &str {
        self.remote.name()
    }

    fn size_bytes(&self) -> u64 {
        self.remote.welcome().size_bytes
    }

    fn min_block_bytes(&self) -> u32 {
        self.remote.welcome().min_block_bytes.max(1)
    }

    async fn execute(&self, op: BlockOp) -> Result<Option<Vec<u8>>, Failure> {
        let Some(cipher) = &self.cipher else {
            return self.run(op).await;
        };
        use volume_crypto::SectorCipher;
        match op {
            BlockOp::Read { offset, length } => {
                SectorCipher::check_aligned(offset, length as u64)
                    .map_err(|e| failure(e, EINVAL))?;
                let mut data = self
                    .run(BlockOp::Read { offset, length })
                    .await?
                    .unwrap_or_default();
                cipher
                    .decrypt(offset, &mut data)
                    .map_err(|e| failure(e, EINVAL))?;
                Ok(Some(data))
            }
            BlockOp::Write { offset, data, fua } => {
                let mut sealed = data.to_vec();
                cipher
                    .encrypt(offset, &mut sealed)
                    .map_err(|e| failure(e, EINVAL))?;
                self.run(BlockOp::Write {
                    offset,
                    data: sealed.into(),
                    fua,
                })
                .await
            }
            BlockOp::WriteZeroes { offset, length, .. } => {
                // Zero ciphertext sectors read back as zeros (see volume_crypto).
                SectorCipher::check_aligned(offset, length).map_err(|e| failure(e, EINVAL))?;
                self.run(op).await
            }
            BlockOp::Flush | BlockOp::Hashes { .. } => self.run(op).await,
        }
    }
}

/// The export of `volume`: never an encrypted one without its key (the
/// client would read ciphertext and write plaintext).
pub(crate) fn export(
    volume: &str,
    remote: Arc<RemoteVolume>,
    data_key: Option<String>,
) -> Result<SatelliteVolume, String> {
    let encrypted = remote.welcome().volume_flags & tether_proto::link::VOLUME_ENCRYPTED != 0;
    tracing::info!(%volume, encrypted, key = data_key.is_some(), "opening the export");
    let cipher = match (encrypted, data_key) {
        (false, _) => None,
        (true, None) => {
            return Err(format!(
                "volume {volume} is encrypted and this satellite does not hold its key (attach again with --encrypt-key-file)"
            ))
        }
        (true, Some(hex)) => {
            let key = volume_crypto::DataKey::from_hex(volume, &hex).map_err(|err| err.to_string())?;
            Some(volume_crypto::SectorCipher::new(&key))
        }
    };
    Ok(SatelliteVolume { remote, cipher })
}
