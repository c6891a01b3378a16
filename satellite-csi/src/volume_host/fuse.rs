//! The volume as one file, `disk`, in a FUSE filesystem: what the loop
//! device on the node stands on (these hosts have no `nbd` module). Reads,
//! writes, discards and fsyncs go to the volume through the gateways; the
//! reply is sent when the gateway has answered, so an fsync the kernel sees
//! succeed is a flush the volume group acknowledged.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, WriteFlags,
};
use nbd_export::{BlockOp, Export};
use tokio::sync::Semaphore;

use crate::export::SatelliteVolume;

/// The one file's name and inode.
pub const DISK_FILE: &str = "disk";
const DISK: INodeNo = INodeNo(2);
/// The largest request the kernel sends (and so the largest link request).
const MAX_REQUEST_BYTES: u32 = 1 << 20;
/// Bytes of requests in flight at once, across the volume (in KiB permits).
const IN_FLIGHT_KIB: usize = 64 << 10;
/// Attributes are not cached: a new size shows at the next look.
const NO_CACHE: Duration = Duration::ZERO;

pub(crate) struct DiskFs {
    volume: Arc<SatelliteVolume>,
    size: Arc<AtomicU64>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<Semaphore>,
    read_only: bool,
    /// The largest request the kernel may send: ours and the gateway's limit.
    max_request_bytes: u32,
}

impl DiskFs {
    pub(crate) fn new(
        volume: Arc<SatelliteVolume>,
        size: Arc<AtomicU64>,
        runtime: tokio::runtime::Handle,
        read_only: bool,
        gateway_max_request_bytes: u32,
    ) -> Self {
        DiskFs {
            volume,
            size,
            runtime,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT_KIB)),
            read_only,
            max_request_bytes: MAX_REQUEST_BYTES.min(gateway_max_request_bytes.max(4096)),
        }
    }

    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0, 0o700, 2),
            DISK => (
                FileType::RegularFile,
                self.size.load(Ordering::Acquire),
                if self.read_only { 0o400 } else { 0o600 },
                1,
            ),
            _ => return None,
        };
        let epoch = SystemTime::UNIX_EPOCH;
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: epoch,
            mtime: epoch,
            ctime: epoch,
            crtime: epoch,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// Runs `op` on the volume and answers with `reply` when it is done,
    /// holding budget for its bytes meanwhile (the kernel waits, not us).
    fn run<R: Send + 'static>(
        &self,
        op: BlockOp,
        bytes: u64,
        reply: R,
        answer: impl FnOnce(R, Result<Option<Vec<u8>>, Errno>) + Send + 'static,
    ) {
        let kib = (bytes.div_ceil(1024) as u32).clamp(1, IN_FLIGHT_KIB as u32);
        let permit = self
            .runtime
            .block_on(self.in_flight.clone().acquire_many_owned(kib))
            .expect("the budget is never closed");
        let volume = self.volume.clone();
        self.runtime.spawn(async move {
            let outcome = volume.execute(op).await.map_err(|failure| {
                tracing::warn!(volume = %volume.name(), error = %failure.message, "volume request failed");
                Errno::from_i32(failure.errno as i32)
            });
            drop(permit);
            answer(reply, outcome);
        });
    }

    /// The part of `[offset, offset + length)` inside the volume.
    fn clamp(&self, offset: u64, length: u64) -> u64 {
        let size = self.size.load(Ordering::Acquire);
        length.min(size.saturating_sub(offset))
    }
}

impl Filesystem for DiskFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(self.max_request_bytes);
        let _ = config.set_max_readahead(self.max_request_bytes);
        // The loop device's direct I/O arrives as asynchronous requests,
        // many at once, not one by one.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match (parent, name.to_str()) {
            (INodeNo::ROOT, Some(DISK_FILE)) => {
                reply.entry(&NO_CACHE, &self.attr(DISK).expect("disk"), Generation(0))
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&NO_CACHE, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if writing && self.read_only {
            return reply.error(Errno::EROFS);
        }
        // No page cache here: the loop device's (and the filesystem's
        // above it) is the one cache, and every write reaches the volume.
        // Parallel direct writes: the kernel would otherwise take the
        // file's lock for each one, one at a time.
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        let length = self.clamp(offset, size.min(self.max_request_bytes) as u64);
        if length == 0 {
            return reply.data(&[]);
        }
        let op = BlockOp::Read {
            offset,
            length: length as u32,
        };
        self.run(op, length, reply, |reply, outcome| match outcome {
            Ok(data) => reply.data(&data.unwrap_or_default()),
            Err(errno) => reply.error(errno),
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        let length = data.len() as u64;
        if self.clamp(offset, length) != length {
            return reply.error(Errno::ENOSPC);
        }
        if length > self.max_request_bytes as u64 {
            return reply.error(Errno::EINVAL);
        }
        let op = BlockOp::Write {
            offset,
            data: bytes::Bytes::copy_from_slice(data),
            fua: false,
        };
        self.run(op, length, reply, move |reply, outcome| match outcome {
            Ok(_) => reply.written(length as u32),
            Err(errno) => reply.error(errno),
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(BlockOp::Flush, 0, reply, |reply, outcome| match outcome {
            Ok(_) => reply.ok(),
            Err(errno) => reply.error(errno),
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close: durability is fsync's business.
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != DISK {
            return reply.error(Errno::EISDIR);
        }
        if self.read_only {
            return reply.error(Errno::EROFS);
        }
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if !punch && !zero {
            // Allocation: a thin volume has nothing to reserve.
            return reply.ok();
        }
        let length = self.clamp(offset, length);
        if length == 0 {
            return reply.ok();
        }
        let op = BlockOp::WriteZeroes {
            offset,
            length,
            punch,
            fua: false,
        };
        self.run(op, 0, reply, |reply, outcome| match outcome {
            Ok(_) => reply.ok(),
            Err(errno) => reply.error(errno),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, DISK_FILE),
        ];
        for (index, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, index as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.size.load(Ordering::Acquire).div_ceil(4096);
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}
