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
            match start_uring_thread(RING_ENTRIES) {
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

fn start_uring_thread(entries: u32) -> io::Result<UringHandle> {
    start_ring_thread(IoUring::new(entries)?)
}

fn start_ring_thread<R: Ring + Send + 'static>(ring: R) -> io::Result<UringHandle> {
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

/// What the ring thread needs of a ring (the real one, or in tests the real
/// one behind a fault injector).
trait Ring {
    /// Queues an entry; false when the submission queue is full.
    ///
    /// # Safety
    /// The buffers the entry points at must stay valid until its completion.
    unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> bool;
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize>;
    /// Every completion there is now: (user data, result).
    fn reap(&mut self) -> Vec<(u64, i32)>;
    /// Completions the completion queue holds.
    fn completion_capacity(&mut self) -> usize;
}

impl Ring for IoUring {
    unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> bool {
        self.submission().push(entry).is_ok()
    }
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        IoUring::submit_and_wait(self, want)
    }
    fn reap(&mut self) -> Vec<(u64, i32)> {
        self.completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect()
    }
    fn completion_capacity(&mut self) -> usize {
        self.completion().capacity()
    }
}

/// The ring thread. Ends when every sender is gone.
///
/// Two rules keep it safe: an operation stays in `in_flight` (owning its
/// buffer and file) until its own completion arrives, whatever `submit`
/// says, because the kernel may already be using it; and no more operations
/// are in flight than the completion queue holds, so completions are never
/// dropped or left to overflow. A failed submit is retried after reaping
/// what has completed (EBUSY means exactly that the completions must be
/// reaped first), backing off if it keeps failing.
fn run_ring<R: Ring>(mut ring: R, receiver: std_mpsc::Receiver<UringOp>, wake_fd: Arc<EventFd>) {
    let mut in_flight: HashMap<u64, UringOp> = HashMap::new();
    let mut next_token: u64 = 0;
    let mut wake_buf = Box::new([0u8; 8]);
    let mut wake_armed = false;
    let mut backlog: std::collections::VecDeque<UringOp> = Default::default();
    // One slot is the wake-up read's.
    let max_in_flight = ring.completion_capacity().saturating_sub(1).max(1);
    let mut failures = 0u32;
    loop {
        if !wake_armed {
            let read = opcode::Read::new(types::Fd(wake_fd.0), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: the wake buffer lives as long as the ring thread.
            if unsafe { ring.push(&read) } {
                wake_armed = true;
            }
        }
        // Take new work, then queue as much as the queues hold.
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
        while in_flight.len() < max_in_flight {
            let Some(op) = backlog.pop_front() else { break };
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
            // SAFETY: the op (with its buffer and file) stays in `in_flight`
            // until this entry's completion is reaped.
            if !unsafe { ring.push(&entry) } {
                backlog.push_front(op);
                break;
            }
            next_token = next_token.wrapping_add(1) % (u64::MAX - 1);
            in_flight.insert(token, op);
        }
        match ring.submit_and_wait(1) {
            Ok(_) => failures = 0,
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
            Err(err) => {
                // Queued entries stay queued; nothing in flight is given up.
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::error!(error = %err, failures, in_flight = in_flight.len(), "io_uring submit failed; reaping and retrying");
                }
                if err.raw_os_error() != Some(libc::EBUSY) {
                    let pause = std::time::Duration::from_millis(1 << failures.min(7));
                    std::thread::sleep(pause);
                }
            }
        }
        for (token, result) in ring.reap() {
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

    /// A new file of `length` bytes (a hole) in `dir`, open for reading and writing.
    fn scratch_file(dir: &std::path::Path, length: u64) -> Arc<File> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("f"))
            .unwrap();
        file.set_len(length).unwrap();
        Arc::new(file)
    }

    async fn round_trip(engine: IoEngine) {
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(dir.path(), 1 << 20);
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

    /// Far more operations in flight than a tiny ring's queues hold: every
    /// one completes, with its own data (no spin on a full completion queue,
    /// no buffer freed while the kernel may still use it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tiny_ring_under_thousands_of_operations_completes_them_all() {
        let engine = IoEngine {
            uring: Some(start_uring_thread(4).unwrap()),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(dir.path(), 4096 * 4096);
        let writes = (0..4096u64).map(|block| {
            let (engine, file) = (engine.clone(), file.clone());
            tokio::spawn(async move {
                let data = Bytes::from(vec![(block % 251) as u8; 4096]);
                engine.write_at(&file, block * 4096, data).await
            })
        });
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            futures::future::join_all(writes),
        )
        .await
        .expect("every write completes");
        assert!(done.into_iter().all(|result| result.unwrap().is_ok()));
        let reads = (0..4096u64).map(|block| {
            let (engine, file) = (engine.clone(), file.clone());
            tokio::spawn(async move { (block, engine.read_at(&file, block * 4096, 4096).await) })
        });
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            futures::future::join_all(reads),
        )
        .await
        .expect("every read completes");
        for result in read {
            let (block, data) = result.unwrap();
            assert_eq!(
                data.unwrap(),
                vec![(block % 251) as u8; 4096],
                "block {block}"
            );
        }
    }

    /// The real ring behind scripted submit failures: EBUSY (the kernel
    /// wants its completions reaped first: it answers EBUSY until they are),
    /// and a transient error.
    struct FaultyRing {
        ring: IoUring,
        script: std::collections::VecDeque<i32>,
        busy: bool,
        submits: usize,
    }

    impl Ring for FaultyRing {
        unsafe fn push(&mut self, entry: &io_uring::squeue::Entry) -> bool {
            self.ring.push(entry)
        }
        fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
            self.submits += 1;
            if self.busy {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            // Fail only once something is in flight, so there is something to lose.
            if self.submits > 3 {
                if let Some(errno) = self.script.pop_front() {
                    self.busy = errno == libc::EBUSY;
                    if errno != libc::EBUSY {
                        // A transient failure after the kernel took the entries.
                        let _ = self.ring.submit();
                    }
                    return Err(io::Error::from_raw_os_error(errno));
                }
            }
            self.ring.submit_and_wait(want)
        }
        fn reap(&mut self) -> Vec<(u64, i32)> {
            self.busy = false;
            self.ring.reap()
        }
        fn completion_capacity(&mut self) -> usize {
            self.ring.completion_capacity()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn submit_errors_neither_spin_nor_give_up_operations_in_flight() {
        let ring = FaultyRing {
            ring: IoUring::new(8).unwrap(),
            script: [libc::EBUSY, libc::EAGAIN, libc::EBUSY, libc::ENOMEM].into(),
            busy: false,
            submits: 0,
        };
        let engine = IoEngine {
            uring: Some(start_ring_thread(ring).unwrap()),
        };
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(dir.path(), 256 * 4096);
        let writes = (0..256u64).map(|block| {
            let (engine, file) = (engine.clone(), file.clone());
            tokio::spawn(async move {
                let data = Bytes::from(vec![(block % 251) as u8 + 1; 4096]);
                engine.write_at(&file, block * 4096, data).await
            })
        });
        let done = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            futures::future::join_all(writes),
        )
        .await
        .expect("every write completes (no spin on EBUSY)");
        for (block, result) in done.into_iter().enumerate() {
            assert!(
                result.unwrap().is_ok(),
                "write {block} was failed although the kernel had it"
            );
        }
        for block in 0..256u64 {
            assert_eq!(
                engine.read_at(&file, block * 4096, 4096).await.unwrap(),
                vec![(block % 251) as u8 + 1; 4096]
            );
        }
    }

    #[tokio::test]
    async fn fallback_round_trip() {
        round_trip(IoEngine::start(false)).await;
    }
}
