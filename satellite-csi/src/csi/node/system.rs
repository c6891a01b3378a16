//! What the node plugin asks of the host: loop devices (`losetup`),
//! filesystems (`blkid`, `mkfs.*`, `resize2fs`, `xfs_growfs`), mounts
//! (`mount`, `umount`, `/proc/self/mountinfo`) and `statvfs`. The
//! util-linux and filesystem tools are what a kubelet host has, and they
//! know the kernel's corner cases better than a rewrite would.

use std::path::{Path, PathBuf};

use tokio::process::Command;

/// A tool that failed: what ran and what it said.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {reason}")]
pub struct ToolError {
    pub command: String,
    pub reason: String,
}

async fn run(program: &str, args: &[&str]) -> Result<String, ToolError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|err| ToolError {
            command: command.clone(),
            reason: format!("cannot run: {err}"),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(ToolError {
            command,
            reason: format!("{} ({})", stderr.trim(), output.status),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// The loop device backed by `file`, if one is.
pub async fn loop_device_of(file: &Path) -> Result<Option<String>, ToolError> {
    let listed = run("losetup", &["--noheadings", "-O", "NAME", "-j", text(file)]).await?;
    Ok(listed.lines().next().map(|line| line.trim().to_string()))
}

/// A new loop device on `file` with `sector_bytes` sectors.
pub async fn attach_loop(
    file: &Path,
    sector_bytes: u32,
    read_only: bool,
) -> Result<String, ToolError> {
    let sector = sector_bytes.to_string();
    // Direct I/O: the loop device sends its requests to the file at once
    // (asynchronously) and keeps no second page cache.
    let mut args = vec![
        "--find",
        "--show",
        "--direct-io=on",
        "--sector-size",
        &sector,
    ];
    if read_only {
        args.push("--read-only");
    }
    args.push(text(file));
    run("losetup", &args).await
}

/// The file behind loop device `device`, as the kernel names it.
pub fn loop_backing_file(device: &str) -> Option<PathBuf> {
    let name = Path::new(device).file_name()?.to_str()?;
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(
        text.trim_end_matches('\n').trim_end_matches(" (deleted)"),
    ))
}

pub async fn detach_loop(device: &str) -> Result<(), ToolError> {
    run("losetup", &["-d", device]).await.map(drop)
}

/// Has the loop device read its backing file's size again.
pub async fn refresh_loop(device: &str) -> Result<(), ToolError> {
    run("losetup", &["--set-capacity", device]).await.map(drop)
}

/// What the device holds, by its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Empty,
    Filesystem(String),
    /// A partition table or something else that is not a filesystem: data
    /// to keep, never to format over.
    Other(String),
}

pub async fn probe(device: &str) -> Result<Content, ToolError> {
    let output = Command::new("blkid")
        .args(["-p", "-o", "export", device])
        .output()
        .await
        .map_err(|err| ToolError {
            command: format!("blkid -p {device}"),
            reason: format!("cannot run: {err}"),
        })?;
    // blkid exits 2 when it finds no signature at all.
    match output.status.code() {
        Some(2) => return Ok(Content::Empty),
        Some(0) => {}
        _ => {
            return Err(ToolError {
                command: format!("blkid -p {device}"),
                reason: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            })
        }
    }
    Ok(parse_probe(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_probe(export: &str) -> Content {
    let field = |name: &str| {
        export
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
    };
    match (field("TYPE"), field("PTTYPE")) {
        (Some(fs), _) => Content::Filesystem(fs),
        (None, Some(table)) => Content::Other(format!("a {table} partition table")),
        (None, None) => Content::Other("an unknown signature".into()),
    }
}

pub async fn make_filesystem(fs_type: &str, device: &str) -> Result<(), ToolError> {
    match fs_type {
        // The volume reads as zeros already: discarding it is wasted time.
        "ext4" => run("mkfs.ext4", &["-q", "-E", "nodiscard", device]).await,
        "xfs" => run("mkfs.xfs", &["-q", "-K", device]).await,
        other => run(&format!("mkfs.{other}"), &[device]).await,
    }
    .map(drop)
}

/// `CAP_SYS_RESOURCE`: what the kernel asks of whoever grows a mounted ext4.
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process holds capability `bit` (in `/proc/self/status`).
pub fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|effective| effective & (1 << bit) != 0)
}

pub async fn grow_filesystem(
    fs_type: &str,
    device: &str,
    mount_point: &Path,
) -> Result<(), ToolError> {
    if fs_type == "ext4" && !has_capability(CAP_SYS_RESOURCE) {
        // resize2fs would only say "Permission denied".
        return Err(ToolError {
            command: format!("resize2fs {device}"),
            reason: "growing a mounted ext4 filesystem needs CAP_SYS_RESOURCE, which this plugin does not hold (give the node plugin's container that capability; xfs grows with CAP_SYS_ADMIN alone)".into(),
        });
    }
    match fs_type {
        "xfs" => run("xfs_growfs", &[text(mount_point)]).await,
        _ => run("resize2fs", &[device]).await,
    }
    .map(drop)
}

pub async fn mount(
    source: &str,
    target: &Path,
    fs_type: Option<&str>,
    options: &[String],
) -> Result<(), ToolError> {
    let joined = options.join(",");
    let mut args = Vec::new();
    if let Some(fs_type) = fs_type {
        args.extend(["-t", fs_type]);
    }
    if !joined.is_empty() {
        args.extend(["-o", joined.as_str()]);
    }
    args.extend([source, text(target)]);
    run("mount", &args).await.map(drop)
}

pub async fn bind_mount(source: &Path, target: &Path, read_only: bool) -> Result<(), ToolError> {
    run("mount", &["--bind", text(source), text(target)]).await?;
    if read_only {
        run("mount", &["-o", "remount,bind,ro", text(target)]).await?;
    }
    Ok(())
}

pub async fn unmount(target: &Path) -> Result<(), ToolError> {
    run("umount", &[text(target)]).await.map(drop)
}

/// Detaches the mount at `target` now and cleans it up when it is no
/// longer busy (tearing down, when an orderly unmount is refused).
pub async fn unmount_lazily(target: &Path) -> Result<(), ToolError> {
    run("umount", &["-l", text(target)]).await.map(drop)
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub source: String,
    pub fs_type: String,
    pub read_only: bool,
}

/// The mount at `path` (the topmost, if several are stacked).
pub fn mounted_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info)
        .into_iter()
        .rev()
        .find(|entry| entry.mount_point == path))
}

/// Every mount whose source is `device`.
pub fn mounts_of(device: &str) -> std::io::Result<Vec<MountEntry>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&info)
        .into_iter()
        .filter(|entry| entry.source == device)
        .collect())
}

fn parse_mountinfo(info: &str) -> Vec<MountEntry> {
    info.lines()
        .filter_map(|line| {
            // id parent major:minor root mount-point options [optional...] - type source super-options
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(left.get(4)?)),
                read_only: left.get(5)?.split(',').any(|option| option == "ro"),
                fs_type: right.first()?.to_string(),
                source: unescape(right.get(1)?),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bytes and inodes of the filesystem at `path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

pub fn usage(path: &Path) -> std::io::Result<FsUsage> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fragment = stat.f_frsize as u64;
    Ok(FsUsage {
        total_bytes: stat.f_blocks as u64 * fragment,
        available_bytes: stat.f_bavail as u64 * fragment,
        used_bytes: (stat.f_blocks as u64 - stat.f_bfree as u64) * fragment,
        total_inodes: stat.f_files as u64,
        free_inodes: stat.f_ffree as u64,
    })
}

/// The size of the block device at `device`.
pub fn device_bytes(device: &str) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut file = std::fs::File::open(device)?;
    file.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_source_type_and_mode() {
        let info = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - ext4 /dev/loop3 rw,errors=continue\n\
                    37 35 0:40 / /var/lib/x ro,relatime shared:2 - fuse.tether tether:vol rw";
        let entries = parse_mountinfo(info);
        assert_eq!(
            entries[0],
            MountEntry {
                mount_point: PathBuf::from("/mnt/with space"),
                source: "/dev/loop3".into(),
                fs_type: "ext4".into(),
                read_only: false,
            }
        );
        assert!(entries[1].read_only);
        assert_eq!(entries[1].fs_type, "fuse.tether");
    }

    #[test]
    fn probes_tell_filesystems_from_other_data() {
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"),
            Content::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_probe("DEVNAME=/dev/loop0\nPTUUID=x\nPTTYPE=gpt\n"),
            Content::Other("a gpt partition table".into())
        );
    }
}
