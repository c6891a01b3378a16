//! Real NBD clients, run as processes: qemu-io, qemu-img, nbdcopy, nbdinfo, fio.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

/// Runs a command and returns its stdout, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} exited with {}: {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `qemu-io -f raw` with the given `-c` commands; fails if any command reports a mismatch or error.
pub fn qemu_io(uri: &str, commands: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["-f", "raw"];
    for command in commands {
        args.extend(["-c", command]);
    }
    args.push(uri);
    let out = run("qemu-io", &args)?;
    if out.contains("Pattern verification failed") || out.contains("failed:") {
        bail!("qemu-io reported a failure: {out}");
    }
    Ok(out)
}

/// `qemu-img convert -f raw -O raw URI FILE`: the whole volume, as qemu reads it, into a file.
pub fn qemu_img_convert(uri: &str, file: &Path) -> anyhow::Result<()> {
    let file = file.to_str().context("file path is not UTF-8")?;
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", uri, file],
    )
    .map(|_| ())
}

/// `nbdinfo --json URI`, parsed.
pub fn nbdinfo(uri: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&run("nbdinfo", &["--json", uri])?)?)
}

/// Copies a local file into the volume with nbdcopy.
pub fn nbdcopy_in(file: &Path, uri: &str) -> anyhow::Result<()> {
    run("nbdcopy", &[file.to_str().unwrap(), uri]).map(|_| ())
}

/// Copies the volume out to a local file with nbdcopy.
pub fn nbdcopy_out(uri: &str, file: &Path) -> anyhow::Result<()> {
    run("nbdcopy", &[uri, file.to_str().unwrap()]).map(|_| ())
}

/// BLAKE3 of the first `length` bytes of a file.
pub fn file_hash(file: &Path, length: u64) -> anyhow::Result<blake3::Hash> {
    use std::io::Read;
    let mut reader = std::fs::File::open(file)?.take(length);
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize())
}

/// Writes `length` bytes of seeded random data to a file.
pub fn random_file(path: &Path, length: usize, seed: u64) -> anyhow::Result<()> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; length];
    rng.fill_bytes(&mut data);
    std::fs::write(path, data)?;
    Ok(())
}

/// A plain HTTP/1.0 GET on loopback (metrics endpoints); returns the body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("HTTP response without a body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    Ok(body.to_string())
}

/// `fio --ioengine=nbd` writing random 16 KiB blocks over `size` bytes at
/// `offset`, then reading every one back and checking its crc32c.
pub fn fio_verify(uri: &str, offset: &str, size: &str, seed: u64) -> std::process::Child {
    std::process::Command::new("fio")
        .args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=16k",
            "--iodepth=16",
            &format!("--offset={offset}"),
            &format!("--size={size}"),
            "--verify=crc32c",
            "--verify_fatal=1",
            &format!("--randseed={seed}"),
            "--output-format=terse",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("fio runs")
}

/// `fio --ioengine=nbd` writing random 4 KiB blocks over the first `size`
/// bytes at `iodepth` for up to 30 s, with no verification and no flush:
/// a load to crash a node under.
pub fn fio_random_load(uri: &str, size: &str, iodepth: u32) -> std::process::Child {
    std::process::Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            &format!("--iodepth={iodepth}"),
            &format!("--size={size}"),
            "--time_based",
            "--runtime=30",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("fio runs")
}

/// Waits for a client process and fails the test with its output if it failed.
pub fn finish(child: std::process::Child, what: &str) {
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
}
