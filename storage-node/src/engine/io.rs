//! Positional file I/O for the engine: io_uring when the kernel offers it,
//! else a portable fallback on tokio's blocking pool. Chosen once at start
//! and logged; both give the same answers.
//!
//! The io_uring side is one thread per node that owns the ring. Callers hand
//! it operations over a channel and wake it through an eventfd that the ring
//! itself is reading, so the thread sleeps in one place
//! (`submit_and_wait`) whether it waits for new work or for completions.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;

/// Which backend a node runs; reported in logs, metrics and `tether node list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackendKind {
    IoUring,
    Threads,
}

impl IoBackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IoBackendKind::IoUring => "io_uring",
            IoBackendKind::Threads => "threads",
        }
    }
}

/// Shared handle to the node's I/O backend. Cheap to clone.
#[derive(Clone)]
pub struct IoEngine {
    uring: Option<UringHandle>,
}

#[derive(Clone)]
struct UringHandle {
    sender: std_mpsc::Sender<UringOp>,
    wake_fd: Arc<EventFd>,
}

struct EventFd(i32);

impl Drop for EventFd {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

enum OpKind {
    Read { buf: Vec<u8> },
    Write { data: Bytes },
    Fdatasync,
}

struct UringOp {
    file: Arc<File>,
    offset: u64,
    kind: OpKind,
    reply: oneshot::Sender<(io::Result<usize>, Option<Vec<u8>>)>,
}

const RING_ENTRIES: u32 = 256;
const WAKE_TOKEN: u64 = u64::MAX;

impl IoEngine {
    /// Starts io_uring if `prefer_uring` and the kernel allows it, else the fallback.
    pub fn start(prefer_uring: bool) -> Self {
        if prefer_uring {
            match start_uring_thread() {
                Ok(handle) => {
                    tracing::info!(io_backend = "io_uring", "I/O backend chosen");
                    return Self {
                        uring: Some(handle),
                    };
                }
                Err(err) => {
                    tracing::warn!(io_backend = "threads", error = %err, "io_uring unavailable; using the portable fallback");
                }
            }
        } else {
            tracing::info!(
                io_backend = "threads",
                "I/O backend chosen by configuration"
            );
        }
        Self { uring: None }
    }

    pub fn kind(&self) -> IoBackendKind {
        if self.uring.is_some() {
            IoBackendKind::IoUring
        } else {
            IoBackendKind::Threads
        }
    }

    /// Reads exactly `length` bytes at `offset`; bytes past the end of the file read as zero.
    pub async fn read_at(
        &self,
        file: &Arc<File>,
        offset: u64,
        length: usize,
    ) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; length];
        let mut done = 0;
        while done < length {
            let chunk = std::mem::take(&mut buf);
            let (result, returned) = self
                .read_once(file, offset + done as u64, chunk, done)
                .await;
            buf = returned;
            match result? {
                0 => break, // end of file: the rest stays zero
                n => done += n,
            }
        }
        Ok(buf)
    }

    /// One read into `buf[start..]`; returns the buffer either way.
    async fn read_once(
        &self,
        file: &Arc<File>,
        offset: u64,
        mut buf: Vec<u8>,
        start: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        match &self.uring {
            Some(uring) if start == 0 => {
                let (result, returned) = uring.submit(file, offset, OpKind::Read { buf }).await;
                (result, returned.unwrap_or_default())
            }
            Some(uring) => {
                // A short read left a tail to fill: the ring reads into the
                // front of the buffer it is given, so hand it the tail.
                let tail = buf.split_off(start);
                let (result, returned) =
                    uring.submit(file, offset, OpKind::Read { buf: tail }).await;
                buf.extend_from_slice(&returned.unwrap_or_default());
                (result, buf)
            }
            None => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || {
                    let result = file.read_at(&mut buf[start..], offset);
                    (result, buf)
                })
                .await
                .expect("blocking read task does not panic")
            }
        }
    }

    /// Writes all of `data` at `offset`.
    pub async fn write_at(&self, file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
        let mut written = 0;
        while written < data.len() {
            let rest = data.slice(written..);
            let n = match &self.uring {
                Some(uring) => {
                    uring
                        .submit(file, offset + written as u64, OpKind::Write { data: rest })
                        .await
                        .0?
                }
                None => {
                    let file = file.clone();
                    let at = offset + written as u64;
                    tokio::task::spawn_blocking(move || file.write_at(&rest, at))
                        .await
                        .expect("blocking write task does not panic")?
                }
            };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0"));
            }
            written += n;
        }
        Ok(())
    }

    /// Makes the file's data (and the metadata needed to read it) durable.
    pub async fn fdatasync(&self, file: &Arc<File>) -> io::Result<()> {
        match &self.uring {
            Some(uring) => uring.submit(file, 0, OpKind::Fdatasync).await.0.map(|_| ()),
            None => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .expect("fdatasync task does not panic")
            }
        }
    }
}

/// Zeroes `[offset, offset+length)` without a buffer of zeros: with
/// `release` the space is deallocated (a hole), otherwise it stays allocated
/// (NBD's NO_HOLE). Reads there return zeros afterwards either way.
pub async fn zero_range(
    file: &Arc<File>,
    offset: u64,
    length: u64,
    release: bool,
) -> io::Result<()> {
    let file = file.clone();
    let mode = if release {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    };
    tokio::task::spawn_blocking(move || {
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                length as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })
    .await
    .expect("fallocate task does not panic")
}

impl UringHandle {
    async fn submit(
        &self,
        file: &Arc<File>,
        offset: u64,
        kind: OpKind,
    ) -> (io::Result<usize>, Option<Vec<u8>>) {
        let (reply, receiver) = oneshot::channel();
        let op = UringOp {
            file: file.clone(),
            offset,
            kind,
            reply,
        };
        if self.sender.send(op).is_err() {
            return (Err(io::Error::other("io_uring thread has stopped")), None);
        }
        let one: u64 = 1;
        unsafe { libc::write(self.wake_fd.0, &one as *const u64 as *const libc::c_void, 8) };
        receiver.await.unwrap_or_else(|_| {
            (
                Err(io::Error::other("io_uring thread dropped an operation")),
                None,
            )
        })
    }
}

fn start_uring_thread() -> io::Result<UringHandle> {
    let ring = IoUring::new(RING_ENTRIES)?;
    let wake_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if wake_fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let wake_fd = Arc::new(EventFd(wake_fd));
    let (sender, receiver) = std_mpsc::channel();
    let thread_wake = wake_fd.clone();
    std::thread::Builder::new()
        .name("io-uring".into())
        .spawn(move || run_ring(ring, receiver, thread_wake))?;
    Ok(UringHandle { sender, wake_fd })
}

/// The ring thread. Ends when every sender is gone.
fn run_ring(mut ring: IoUring, receiver: std_mpsc::Receiver<UringOp>, wake_fd: Arc<EventFd>) {
    let mut in_flight: HashMap<u64, UringOp> = HashMap::new();
    let mut next_token: u64 = 0;
    let mut wake_buf = Box::new([0u8; 8]);
    let mut wake_armed = false;
    let mut backlog: std::collections::VecDeque<UringOp> = Default::default();
    loop {
        if !wake_armed {
            let read = opcode::Read::new(types::Fd(wake_fd.0), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            if unsafe { ring.submission().push(&read) }.is_ok() {
                wake_armed = true;
            }
        }
        // Take new work, then queue as much as the submission queue holds.
        loop {
            match receiver.try_recv() {
                Ok(op) => backlog.push_back(op),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    if in_flight.is_empty() && backlog.is_empty() {
                        return;
                    }
                    break;
                }
            }
        }
        while let Some(op) = backlog.pop_front() {
            let token = next_token;
            let fd = types::Fd(op.file.as_raw_fd());
            let entry = match &op.kind {
                OpKind::Read { buf } => {
                    opcode::Read::new(fd, buf.as_ptr() as *mut u8, buf.len() as u32)
                        .offset(op.offset)
                        .build()
                }
                OpKind::Write { data } => opcode::Write::new(fd, data.as_ptr(), data.len() as u32)
                    .offset(op.offset)
                    .build(),
                OpKind::Fdatasync => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
            .user_data(token);
            if unsafe { ring.submission().push(&entry) }.is_err() {
                backlog.push_front(op);
                break;
            }
            next_token = next_token.wrapping_add(1) % (u64::MAX - 1);
            in_flight.insert(token, op);
        }
        if let Err(err) = ring.submit_and_wait(1) {
            if err.raw_os_error() == Some(libc::EINTR) || err.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            tracing::error!(error = %err, "io_uring submit failed; failing in-flight operations");
            for (_, op) in in_flight.drain() {
                let _ = op
                    .reply
                    .send((Err(io::Error::other(err.to_string())), None));
            }
            continue;
        }
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (token, result) in completions {
            if token == WAKE_TOKEN {
                wake_armed = false;
                continue;
            }
            let Some(op) = in_flight.remove(&token) else {
                continue;
            };
            let result = if result < 0 {
                Err(io::Error::from_raw_os_error(-result))
            } else {
                Ok(result as usize)
            };
            let buf = match op.kind {
                OpKind::Read { buf } => Some(buf),
                _ => None,
            };
            let _ = op.reply.send((result, buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn round_trip(engine: IoEngine) {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.path().join("f"))
                .unwrap(),
        );
        file.set_len(1 << 20).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        engine
            .write_at(&file, 12_345, Bytes::from(data.clone()))
            .await
            .unwrap();
        engine.fdatasync(&file).await.unwrap();
        assert_eq!(
            engine.read_at(&file, 12_345, data.len()).await.unwrap(),
            data
        );
        // Past the end of the file reads as zeros.
        let tail = engine.read_at(&file, (1 << 20) - 10, 100).await.unwrap();
        assert_eq!(tail, vec![0u8; 100]);
        zero_range(&file, 12_288, 8192, true).await.unwrap();
        let punched = engine.read_at(&file, 12_345, 10).await.unwrap();
        assert_eq!(punched, vec![0u8; 10]);
    }

    #[tokio::test]
    async fn io_uring_round_trip() {
        let engine = IoEngine::start(true);
        assert_eq!(
            engine.kind(),
            IoBackendKind::IoUring,
            "this kernel has io_uring"
        );
        round_trip(engine).await;
    }

    #[tokio::test]
    async fn fallback_round_trip() {
        round_trip(IoEngine::start(false)).await;
    }
}
