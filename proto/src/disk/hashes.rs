//! The `hashes` file: a 4096-byte header (`"TTHASHL1"`, the chunk size as
//! u64 LE, zeros) then 32 bytes (the BLAKE3 leaf) per chunk.

use crate::ProtoError;

pub const HEADER_LEN: u64 = 4096;
const MAGIC: &[u8; 8] = b"TTHASHL1";
const FILE: &str = "hashes";

pub fn encode_header(chunk_size_bytes: u64) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..16].copy_from_slice(&chunk_size_bytes.to_le_bytes());
    header
}

/// Checks a header against the chunk size `volume.json` states.
pub fn check_header(header: &[u8], chunk_size_bytes: u64) -> Result<(), ProtoError> {
    if header.len() < 16 || &header[..8] != MAGIC {
        return Err(bad("magic", "is not TTHASHL1".into()));
    }
    let stated = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if stated != chunk_size_bytes {
        return Err(bad(
            "chunk_size",
            format!("{stated} differs from volume.json's {chunk_size_bytes}"),
        ));
    }
    Ok(())
}

/// The file length that holds exactly `n_chunks` leaves: checked before
/// the leaves are read, so a damaged chunk count cannot size an allocation
/// beyond the file that is there.
pub fn file_len(n_chunks: u64) -> u64 {
    HEADER_LEN + n_chunks * 32
}

/// Checks the file's length against the chunk count.
pub fn check_len(len: u64, n_chunks: u64) -> Result<(), ProtoError> {
    if len < file_len(n_chunks) {
        return Err(bad(
            "length",
            format!(
                "{len} bytes cannot hold {n_chunks} chunk hashes ({} needed)",
                file_len(n_chunks)
            ),
        ));
    }
    Ok(())
}

fn bad(field: &'static str, reason: String) -> ProtoError {
    ProtoError::on_disk(FILE, field, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_of_another_format_or_chunk_size_is_refused() {
        let header = encode_header(256 << 10);
        check_header(&header, 256 << 10).unwrap();
        assert!(check_header(&header, 4096).is_err());
        assert!(check_header(&header[..10], 256 << 10).is_err());
        let mut other = header.clone();
        other[0] = b'X';
        assert!(check_header(&other, 256 << 10).is_err());
        check_len(file_len(10), 10).unwrap();
        assert!(check_len(file_len(10) - 1, 10).is_err());
    }
}
