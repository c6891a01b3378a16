//! Single-thread throughput of `SectorCipher` on 1 MiB requests.
fn main() {
    let cipher = volume_crypto::SectorCipher::new(&volume_crypto::DataKey::generate());
    let mut data = vec![7u8; 1 << 20];
    for (what, encrypt) in [("encrypt", true), ("decrypt", false)] {
        let started = std::time::Instant::now();
        for i in 0..2000u64 {
            if encrypt {
                cipher.encrypt(i << 20, &mut data).unwrap();
            } else {
                cipher.decrypt(i << 20, &mut data).unwrap();
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!("{what} {:.2} GB/s", 2000.0 * 1.048576e6 / secs / 1e9);
    }
}
