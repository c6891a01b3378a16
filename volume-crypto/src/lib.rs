//! Encryption at rest with a key the user owns.
//!
//! - The **user key** (256 bits, in a file the user keeps) never reaches a
//!   Tether server: the CLI reads it, and uses it only to wrap and unwrap.
//! - Each volume has a random **data key** (512 bits: XTS-AES-256's two
//!   keys). The store holds it only *wrapped* by the user key (RFC 3394 AES
//!   key wrap, whose integrity check makes a wrong user key fail cleanly),
//!   plus a **key check** (a BLAKE3 derivation of the data key) so servers
//!   can refuse a wrong data key without being able to recover it.
//! - Data is encrypted in 512-byte **sectors** with XTS-AES-256, the sector
//!   number as tweak: length-preserving, so offsets and thin provisioning
//!   work as for plain volumes. A sector whose *ciphertext* is all zeros
//!   reads as zeros: unwritten space, TRIM and WRITE_ZEROES holes stay holes
//!   (which reveals which sectors hold data, as thin provisioning does).

use aes::cipher::KeyInit;
use aes::Aes256;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes per encrypted sector; I/O on encrypted volumes is aligned to it.
pub const SECTOR_BYTES: usize = 512;
/// The only cipher there is so far, as named in volume specs.
pub const CIPHER: &str = "xts-aes-256";
const DATA_KEY_BYTES: usize = 64;
const KEY_CHECK_CONTEXT: &str = "tether 2026-11 volume data key check v1";

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the key does not open volume {volume} (wrong key)")]
    WrongKey { volume: String },
    #[error("volume {volume}: stored key material is malformed ({reason})")]
    BadKeyMaterial { volume: String, reason: String },
    #[error("encrypted I/O at offset {offset} length {length} is not aligned to {SECTOR_BYTES}-byte sectors")]
    Misaligned { offset: u64, length: u64 },
}

/// The user's key: 32 bytes, read from a file as raw bytes or 64 hex digits.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct UserKey([u8; 32]);

impl UserKey {
    pub fn from_file(path: &std::path::Path) -> Result<Self, CryptoError> {
        let failed = |reason: String| CryptoError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let mut bytes = std::fs::read(path).map_err(|err| failed(err.to_string()))?;
        let key = Self::from_bytes(&bytes).map_err(failed);
        bytes.zeroize();
        key
    }

    /// 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut key = [0u8; 32];
        if bytes.len() == 32 {
            key.copy_from_slice(bytes);
            return Ok(Self(key));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| wrong_length(bytes.len()))?;
        hex::decode_to_slice(text.trim(), &mut key).map_err(|_| wrong_length(bytes.len()))?;
        Ok(Self(key))
    }
}

fn wrong_length(length: usize) -> String {
    format!("holds {length} bytes; a key is 32 raw bytes or 64 hex digits (e.g. `head -c 32 /dev/urandom > key`)")
}

/// A volume's data key, unwrapped: only in memory, wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; DATA_KEY_BYTES]);

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; DATA_KEY_BYTES];
        rand::fill(&mut key[..]);
        Self(key)
    }

    /// The data key wrapped by `user` (hex), what the store keeps.
    pub fn wrap(&self, user: &UserKey) -> String {
        let kek = aes_kw::KekAes256::from(user.0);
        hex::encode(kek.wrap_vec(&self.0).expect("64 bytes is a multiple of 8"))
    }

    pub fn unwrap(volume: &str, wrapped_hex: &str, user: &UserKey) -> Result<Self, CryptoError> {
        let wrapped = hex::decode(wrapped_hex).map_err(|err| CryptoError::BadKeyMaterial {
            volume: volume.into(),
            reason: err.to_string(),
        })?;
        let kek = aes_kw::KekAes256::from(user.0);
        let mut plain = kek
            .unwrap_vec(&wrapped)
            .map_err(|_| CryptoError::WrongKey {
                volume: volume.into(),
            })?;
        let key = Self::from_slice(volume, &plain);
        plain.zeroize();
        key
    }

    fn from_slice(volume: &str, bytes: &[u8]) -> Result<Self, CryptoError> {
        let key: [u8; DATA_KEY_BYTES] =
            bytes.try_into().map_err(|_| CryptoError::BadKeyMaterial {
                volume: volume.into(),
                reason: format!("a data key is {DATA_KEY_BYTES} bytes, not {}", bytes.len()),
            })?;
        Ok(Self(key))
    }

    /// For handing the key to the presenting node (over mutual TLS only).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(volume: &str, text: &str) -> Result<Self, CryptoError> {
        let mut bytes = hex::decode(text.trim()).map_err(|err| CryptoError::BadKeyMaterial {
            volume: volume.into(),
            reason: err.to_string(),
        })?;
        let key = Self::from_slice(volume, &bytes);
        bytes.zeroize();
        key
    }

    /// A one-way value that tells whether a data key is this volume's.
    pub fn check_value(&self) -> String {
        hex::encode(blake3::derive_key(KEY_CHECK_CONTEXT, &self.0))
    }

    /// Checks the key against the volume's stored check value.
    pub fn verify(&self, volume: &str, check_value: &str) -> Result<(), CryptoError> {
        let expected =
            blake3::Hash::from_hex(check_value).map_err(|err| CryptoError::BadKeyMaterial {
                volume: volume.into(),
                reason: err.to_string(),
            })?;
        // blake3::Hash compares in constant time.
        if blake3::Hash::from(blake3::derive_key(KEY_CHECK_CONTEXT, &self.0)) == expected {
            Ok(())
        } else {
            Err(CryptoError::WrongKey {
                volume: volume.into(),
            })
        }
    }
}

/// XTS-AES-256 (IEEE 1619) over 512-byte sectors numbered from the volume's
/// start. A sector's 32 blocks go through AES together (`encrypt_blocks`),
/// so AES-NI pipelines them; the tweak chain is computed first.
pub struct SectorCipher {
    data: Aes256,
    tweak: Aes256,
}

const BLOCKS_PER_SECTOR: usize = SECTOR_BYTES / 16;

/// Multiplies a tweak by the primitive element α of GF(2^128) (XTS's
/// little-endian convention).
fn times_alpha(tweak: u128) -> u128 {
    (tweak << 1) ^ if tweak >> 127 == 1 { 0x87 } else { 0 }
}

impl SectorCipher {
    pub fn new(key: &DataKey) -> Self {
        let (first, second) = key.0.split_at(32);
        Self {
            data: Aes256::new_from_slice(first).expect("32-byte key"),
            tweak: Aes256::new_from_slice(second).expect("32-byte key"),
        }
    }

    /// Refuses I/O that does not cover whole sectors.
    pub fn check_aligned(offset: u64, length: u64) -> Result<(), CryptoError> {
        let sector = SECTOR_BYTES as u64;
        if offset.is_multiple_of(sector) && length.is_multiple_of(sector) {
            Ok(())
        } else {
            Err(CryptoError::Misaligned { offset, length })
        }
    }

    fn sector(&self, index: u64, sector: &mut [u8], encrypt: bool) {
        use aes::cipher::{BlockDecrypt, BlockEncrypt};
        let mut tweak = aes::Block::from((index as u128).to_le_bytes());
        self.tweak.encrypt_block(&mut tweak);
        let mut tweak = u128::from_le_bytes(tweak.into());
        let mut tweaks = [0u128; BLOCKS_PER_SECTOR];
        let mut blocks = [aes::Block::default(); BLOCKS_PER_SECTOR];
        for ((slot, block), bytes) in tweaks
            .iter_mut()
            .zip(&mut blocks)
            .zip(sector.chunks_exact(16))
        {
            *slot = tweak;
            let value = u128::from_le_bytes(bytes.try_into().expect("16-byte block")) ^ tweak;
            *block = aes::Block::from(value.to_le_bytes());
            tweak = times_alpha(tweak);
        }
        if encrypt {
            self.data.encrypt_blocks(&mut blocks);
        } else {
            self.data.decrypt_blocks(&mut blocks);
        }
        for ((slot, block), bytes) in tweaks.iter().zip(&blocks).zip(sector.chunks_exact_mut(16)) {
            let value = u128::from_le_bytes((*block).into()) ^ slot;
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// Encrypts `data`, which is written at `offset`, in place.
    pub fn encrypt(&self, offset: u64, data: &mut [u8]) -> Result<(), CryptoError> {
        Self::check_aligned(offset, data.len() as u64)?;
        let first = offset / SECTOR_BYTES as u64;
        for (index, sector) in data.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            // (An all-zero ciphertext sector, which would read back as a hole,
            // has probability 2^-4096.)
            self.sector(first + index as u64, sector, true);
        }
        Ok(())
    }

    /// Decrypts `data`, read from `offset`, in place; all-zero sectors are holes.
    pub fn decrypt(&self, offset: u64, data: &mut [u8]) -> Result<(), CryptoError> {
        Self::check_aligned(offset, data.len() as u64)?;
        let first = offset / SECTOR_BYTES as u64;
        for (index, sector) in data.chunks_exact_mut(SECTOR_BYTES).enumerate() {
            if sector.iter().all(|byte| *byte == 0) {
                continue;
            }
            self.sector(first + index as u64, sector, false);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_unwrap_and_wrong_keys() {
        let user = UserKey::from_bytes(&[7u8; 32]).unwrap();
        let key = DataKey::generate();
        let wrapped = key.wrap(&user);
        let unwrapped = DataKey::unwrap("v", &wrapped, &user).unwrap();
        assert_eq!(unwrapped.to_hex(), key.to_hex());
        unwrapped.verify("v", &key.check_value()).unwrap();

        let other = UserKey::from_bytes(hex::encode([8u8; 32]).as_bytes()).unwrap();
        assert!(matches!(
            DataKey::unwrap("v", &wrapped, &other),
            Err(CryptoError::WrongKey { .. })
        ));
        assert!(DataKey::generate().verify("v", &key.check_value()).is_err());
        assert!(UserKey::from_bytes(b"too short").is_err());
        assert!(UserKey::from_bytes(format!("{}\n", "ab".repeat(32)).as_bytes()).is_ok());
    }

    /// The pipelined sectors are XTS exactly: the same as the xts-mode crate.
    #[test]
    fn matches_the_xts_mode_crate() {
        use aes::cipher::KeyInit;
        let key = DataKey::generate();
        let ours = SectorCipher::new(&key);
        let reference = xts_mode::Xts128::new(
            Aes256::new_from_slice(&key.0[..32]).unwrap(),
            Aes256::new_from_slice(&key.0[32..]).unwrap(),
        );
        let plain: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let offset = 512 * 1_000_003u64;
        let mut mine = plain.clone();
        ours.encrypt(offset, &mut mine).unwrap();
        let mut theirs = plain.clone();
        reference.encrypt_area(&mut theirs, 512, 1_000_003, xts_mode::get_tweak_default);
        assert_eq!(mine, theirs);
        ours.decrypt(offset, &mut mine).unwrap();
        assert_eq!(mine, plain);
    }

    #[test]
    fn sectors_round_trip_hide_plaintext_and_keep_holes() {
        let cipher = SectorCipher::new(&DataKey::generate());
        let plain: Vec<u8> = b"TETHER-CANARY-0123456789abcdef!!".repeat(64); // 2 KiB
        let mut data = plain.clone();
        cipher.encrypt(4096, &mut data).unwrap();
        assert_ne!(data, plain);
        assert!(!data.windows(13).any(|window| window == b"TETHER-CANARY"));
        // The same plaintext in two sectors encrypts differently (the tweak).
        assert_ne!(data[..512], data[512..1024]);
        let mut back = data.clone();
        cipher.decrypt(4096, &mut back).unwrap();
        assert_eq!(back, plain);
        // Decrypting at another offset does not give the plaintext back.
        let mut moved = data.clone();
        cipher.decrypt(8192, &mut moved).unwrap();
        assert_ne!(moved, plain);
        // Holes read as zeros.
        let mut hole = vec![0u8; 1024];
        cipher.decrypt(0, &mut hole).unwrap();
        assert!(hole.iter().all(|byte| *byte == 0));
        assert!(matches!(
            cipher.encrypt(100, &mut vec![1u8; 512]),
            Err(CryptoError::Misaligned { .. })
        ));
    }
}
