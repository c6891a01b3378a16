//! Directories no client-chosen path may reach into: pools, the registry's
//! state, credentials, etcd's data. Each holds a marker file; a path whose
//! directory (or any directory above it) holds the marker is inside one.
//!
//! Daemons run as root and create files at paths users choose (an NBD Unix
//! socket); a socket made inside a pool could be taken for a volume and a
//! path inside one could replace its metadata. The marker lets any process
//! on the host recognise any other process's protected directory, not only
//! its own.

use std::path::{Path, PathBuf};

/// The marker's file name.
pub const MARKER: &str = ".tether-protected";

/// Marks `dir` as protected (creating it if needed). Idempotent.
pub fn mark(dir: &Path, what: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let marker = dir.join(MARKER);
    if !marker.exists() {
        std::fs::write(
            &marker,
            format!("{what}: Tether refuses to create client-chosen files in here\n"),
        )?;
    }
    Ok(())
}

/// The protected directory that `path` would land in, if any: the nearest
/// existing ancestor is resolved (symlinks included) and it and every
/// directory above it are checked for the marker.
pub fn protected_ancestor(path: &Path) -> Option<PathBuf> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let existing = absolute
        .ancestors()
        .skip(1)
        .find_map(|dir| std::fs::canonicalize(dir).ok())?;
    existing
        .ancestors()
        .find(|dir| dir.join(MARKER).exists())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_marked_directory_are_protected_wherever_they_point() {
        let root = std::env::temp_dir().join(format!("tether-protected-{}", std::process::id()));
        let pool = root.join("pool");
        mark(&pool, "test pool").unwrap();
        std::fs::create_dir_all(pool.join("volumes/v")).unwrap();
        assert_eq!(
            protected_ancestor(&pool.join("volumes/v/volume.json")),
            Some(pool.clone())
        );
        assert_eq!(
            protected_ancestor(&pool.join("volumes/new/deeper.sock")),
            Some(pool.clone())
        );
        assert_eq!(protected_ancestor(&pool.join("x.sock")), Some(pool.clone()));
        assert_eq!(protected_ancestor(&root.join("outside.sock")), None);
        // Through a symlink from outside.
        let link = root.join("link");
        std::os::unix::fs::symlink(&pool, &link).unwrap();
        assert_eq!(protected_ancestor(&link.join("x.sock")), Some(pool.clone()));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
