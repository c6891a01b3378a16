//! Block engine tests on real files: data round trips, thin provisioning,
//! resize, bad input, and hash lists that match the data after a crash.

use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use storage_node::engine::{IoEngine, Pool, Volume, VolumeOptions};
use storage_node::NodeError;

const MIB: u64 = 1 << 20;

fn pool(dir: &std::path::Path, capacity: u64) -> Pool {
    Pool::open(
        dir,
        capacity,
        IoEngine::start(true),
        VolumeOptions::default(),
    )
    .unwrap()
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

async fn assert_hashes_match_data(volume: &Volume) {
    let from_data = volume.compute_hashes_from_data().await.unwrap();
    assert_eq!(
        volume.hash_tree().leaves(),
        from_data.as_slice(),
        "hash list matches the data"
    );
}

#[tokio::test]
async fn writes_read_back_and_hash_lists_follow() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 1 << 30);
    let volume = pool.create("vol1", 64 * MIB).await.unwrap();
    let data = random_bytes(1, 3 * MIB as usize + 123);
    volume
        .write(5 * MIB - 7, Bytes::from(data.clone()), false)
        .await
        .unwrap();
    volume.flush().await.unwrap();
    assert_eq!(
        volume.read(5 * MIB - 7, data.len() as u32).await.unwrap(),
        data
    );
    assert_eq!(
        volume.read(0, 4096).await.unwrap(),
        vec![0u8; 4096],
        "unwritten space reads as zeros"
    );
    assert!(volume.stats().dirty_chunks > 0);
    volume.settle().await.unwrap();
    assert_eq!(volume.stats().dirty_chunks, 0);
    assert_eq!(volume.stats().marked_extents, 0);
    assert_hashes_match_data(&volume).await;
}

#[tokio::test]
async fn volumes_are_thin_and_trim_releases_space() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 1 << 40);
    let volume = pool.create("thin", 100 << 30).await.unwrap();
    assert!(
        volume.stats().allocated_bytes < MIB,
        "a new 100 GiB volume uses no space"
    );
    volume
        .write(0, Bytes::from(vec![7u8; 8 * MIB as usize]), true)
        .await
        .unwrap();
    let written = volume.stats().allocated_bytes;
    assert!(written >= 8 * MIB, "allocated {written}");
    volume.write_zeroes(0, 8 * MIB, true, true).await.unwrap();
    assert!(
        volume.stats().allocated_bytes < written,
        "trim released space"
    );
    assert_eq!(volume.read(0, 4096).await.unwrap(), vec![0u8; 4096]);

    let small = pool.create("small", 32 * MIB).await.unwrap();
    small
        .write(0, Bytes::from(vec![7u8; 8 * MIB as usize]), false)
        .await
        .unwrap();
    small.write_zeroes(MIB, 3 * MIB, true, false).await.unwrap();
    small
        .write_zeroes(5 * MIB, 4096, false, false)
        .await
        .unwrap();
    // NO_HOLE zeroing of a large range: no buffer of zeros, space stays allocated.
    small
        .write(8 * MIB, Bytes::from(vec![3u8; 16 * MIB as usize]), false)
        .await
        .unwrap();
    let before = small.stats().allocated_bytes;
    small
        .write_zeroes(8 * MIB, 16 * MIB, false, false)
        .await
        .unwrap();
    assert_eq!(small.read(8 * MIB, 4096).await.unwrap(), vec![0u8; 4096]);
    assert!(
        small.stats().allocated_bytes >= before,
        "NO_HOLE keeps the range allocated"
    );
    small.settle().await.unwrap();
    assert_hashes_match_data(&small).await;
}

#[tokio::test]
async fn bad_input_is_refused_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 100 * MIB);
    let volume = pool.create("vol", 16 * MIB).await.unwrap();
    volume
        .write(0, Bytes::from_static(b"keep me"), true)
        .await
        .unwrap();
    assert!(matches!(
        volume.read(16 * MIB - 10, 20).await,
        Err(NodeError::OutOfRange { .. })
    ));
    assert!(matches!(
        volume
            .write(u64::MAX - 2, Bytes::from_static(b"xyz"), false)
            .await,
        Err(NodeError::OutOfRange { .. })
    ));
    assert!(matches!(
        volume.write_zeroes(16 * MIB, 1, true, false).await,
        Err(NodeError::OutOfRange { .. })
    ));
    assert_eq!(volume.read(0, 7).await.unwrap(), b"keep me");

    assert!(matches!(
        pool.create("big", 90 * MIB).await,
        Err(NodeError::PoolFull { .. })
    ));
    assert!(matches!(
        pool.create("vol", MIB).await,
        Err(NodeError::VolumeExists { .. })
    ));
    assert!(matches!(
        pool.create("odd", 1000).await,
        Err(NodeError::BadSize { .. })
    ));
    assert!(pool.create("../escape", MIB).await.is_err());
    assert!(matches!(
        volume.resize(8 * MIB).await,
        Err(NodeError::ShrinkRefused { .. })
    ));
}

#[tokio::test]
async fn resize_grows_and_keeps_data_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 1 << 30);
    let volume = pool.create("grow", 10 * MIB + 512).await.unwrap();
    let data = random_bytes(2, MIB as usize);
    volume
        .write(9 * MIB, Bytes::from(data.clone()), true)
        .await
        .unwrap();
    pool.resize("grow", 40 * MIB).await.unwrap();
    assert_eq!(volume.size_bytes(), 40 * MIB);
    volume
        .write(39 * MIB, Bytes::from(data.clone()), true)
        .await
        .unwrap();
    assert_eq!(volume.read(9 * MIB, MIB as u32).await.unwrap(), data);
    volume.settle().await.unwrap();
    assert_hashes_match_data(&volume).await;
    drop(volume);
    drop(pool);
    let reopened = self::pool(dir.path(), 1 << 30);
    let volume = reopened.get("grow").unwrap();
    assert_eq!(volume.size_bytes(), 40 * MIB);
    assert_eq!(volume.read(39 * MIB, MIB as u32).await.unwrap(), data);
    assert_hashes_match_data(&volume).await;
}

/// Dropping the volume without settling is what `kill -9` leaves behind: the
/// data in the file, the hashes on disk stale, the activity log marking them.
#[tokio::test]
async fn after_a_crash_the_hash_list_matches_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    {
        let pool = pool(dir.path(), 1 << 30);
        let volume = pool.create("crashy", 256 * MIB).await.unwrap();
        // Round 1 settles (hashes on disk are current), round 2 does not.
        for round in 0..2 {
            for _ in 0..200 {
                let offset = rng.random_range(0..(256 * MIB - 65536)) & !511;
                let len = rng.random_range(1..128) * 512;
                volume
                    .write(offset, Bytes::from(random_bytes(rng.random(), len)), false)
                    .await
                    .unwrap();
            }
            volume.flush().await.unwrap();
            if round == 0 {
                volume.settle().await.unwrap();
            } else {
                // Half of the dirty chunks rehashed, nothing checkpointed.
                volume.rehash_dirty().await.unwrap();
                volume
                    .write(0, Bytes::from(vec![9u8; 4096]), true)
                    .await
                    .unwrap();
            }
        }
        assert!(volume.stats().marked_extents > 0);
        // crash: no settle, no checkpoint
    }
    let pool = pool(dir.path(), 1 << 30);
    let volume = pool.get("crashy").unwrap();
    assert_eq!(
        volume.stats().marked_extents,
        0,
        "recovery unmarked every extent"
    );
    assert_eq!(volume.read(0, 4096).await.unwrap(), vec![9u8; 4096]);
    assert_hashes_match_data(&volume).await;
}

#[tokio::test]
async fn concurrent_writes_to_one_chunk_leave_a_true_hash() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(dir.path(), 1 << 30);
    let volume: Arc<Volume> = pool.create("race", 4 * MIB).await.unwrap();
    let mut tasks = Vec::new();
    for writer in 0..8u8 {
        let volume = volume.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                volume
                    .write((i % 16) * 4096, Bytes::from(vec![writer; 4096]), false)
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    volume.rehash_dirty().await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    volume.settle().await.unwrap();
    assert_hashes_match_data(&volume).await;
}

/// A copy whose files were damaged on disk (a metadata field out of range, a
/// hashes file of another format) is quarantined when the pool opens: the
/// node refuses that one copy with the reason and goes on serving the rest,
/// instead of dividing by zero, allocating without bound or trusting hashes
/// it cannot read.
#[tokio::test]
async fn damaged_on_disk_formats_quarantine_the_copy_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let volumes = dir.path().join("volumes");
    {
        let pool = pool(dir.path(), 1 << 30);
        for name in ["good", "zero-chunk", "huge", "no-extents", "bad-hashes"] {
            pool.create(name, 8 * MIB).await.unwrap();
        }
        pool.get("good")
            .unwrap()
            .write(0, Bytes::from(vec![9u8; 4096]), true)
            .await
            .unwrap();
    }
    let edit_meta = |name: &str, field: &str, value: serde_json::Value| {
        let path = volumes.join(name).join("volume.json");
        let mut meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        meta[field] = value;
        std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    };
    edit_meta("zero-chunk", "chunk_size_bytes", 0.into());
    edit_meta("huge", "size_bytes", (1u64 << 62).into());
    edit_meta("no-extents", "extent_chunks", 0.into());
    let hashes = volumes.join("bad-hashes").join("hashes");
    let mut bytes = std::fs::read(&hashes).unwrap();
    bytes[..8].copy_from_slice(b"NOTHASH!");
    std::fs::write(&hashes, bytes).unwrap();

    let pool = pool(dir.path(), 1 << 30);
    let good = pool.get("good").expect("the undamaged copy is served");
    assert_eq!(good.read(0, 4096).await.unwrap(), vec![9u8; 4096]);
    let quarantined = pool.quarantined();
    for (name, names_the_fault) in [
        ("zero-chunk", "chunk_size_bytes"),
        ("huge", "size_bytes"),
        ("no-extents", "extent_chunks"),
        ("bad-hashes", "hashes"),
    ] {
        let reason = quarantined
            .get(name)
            .unwrap_or_else(|| panic!("{name} is quarantined: {quarantined:?}"));
        assert!(reason.contains(names_the_fault), "{name}: {reason}");
    }
}
