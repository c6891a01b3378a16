//! `lossyfs BACKING MOUNTPOINT`: a FUSE filesystem over the directory
//! BACKING that forgets, on a power cut, every write not yet made durable,
//! as a disk with a volatile cache does (the LazyFS idea).
//!
//! Data written to a file stays in this process's memory until the file is
//! fsynced (fsync or fdatasync); only then does it reach BACKING (and is
//! fdatasynced there). SIGUSR1 is the power cut: the process exits at once
//! and everything not synced is gone (the mount point is left to
//! `fusermount3 -uz`). SIGTERM unmounts first; unsynced writes are gone too.
//! SIGUSR2 turns a failing disk on or off: while on, every write and fsync
//! fails with EIO (reads still work), as a disk with bad sectors does.
//!
//! Simplifications, said plainly: metadata (create, rename, unlink,
//! mkdir, chmod) is durable at once, as on a journalling filesystem that
//! commits it immediately; a truncate or a fallocate (punch, zero range)
//! first applies the file's pending writes (making them durable early,
//! which can only hide a bug, never invent one). The power-loss test
//! targets what matters: data acknowledged after a flush must have been
//! fdatasynced.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request,
};

const TTL: Duration = Duration::ZERO;

struct Inner {
    backing: PathBuf,
    /// Inode number → path relative to `backing` (1 is the root).
    paths: HashMap<u64, PathBuf>,
    inodes: HashMap<PathBuf, u64>,
    next_inode: u64,
    /// Writes not yet synced, by inode, in the order they were made.
    pending: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

struct LossyFs(Mutex<Inner>);

fn errno(err: std::io::Error) -> Errno {
    Errno::from(err)
}

impl Inner {
    fn full(&self, relative: &Path) -> PathBuf {
        self.backing.join(relative)
    }

    fn inode_of(&mut self, relative: PathBuf) -> u64 {
        if let Some(inode) = self.inodes.get(&relative) {
            return *inode;
        }
        let inode = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(relative.clone(), inode);
        self.paths.insert(inode, relative);
        inode
    }

    fn path(&self, inode: u64) -> Result<PathBuf, Errno> {
        self.paths.get(&inode).cloned().ok_or(Errno::ENOENT)
    }

    fn attr(&self, inode: u64) -> Result<FileAttr, Errno> {
        let relative = self.path(inode)?;
        let meta = std::fs::symlink_metadata(self.full(&relative)).map_err(errno)?;
        let pending_end = self
            .pending
            .get(&inode)
            .into_iter()
            .flatten()
            .map(|(offset, data)| offset + data.len() as u64)
            .max()
            .unwrap_or(0);
        let kind = if meta.is_dir() {
            FileType::Directory
        } else if meta.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let time = |secs: i64| UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
        Ok(FileAttr {
            ino: INodeNo(inode),
            size: meta.len().max(pending_end),
            blocks: meta.blocks(),
            atime: time(meta.atime()),
            mtime: time(meta.mtime()),
            ctime: time(meta.ctime()),
            crtime: time(meta.ctime()),
            kind,
            perm: (meta.permissions().mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn open_backing(&self, inode: u64) -> Result<File, Errno> {
        let relative = self.path(inode)?;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.full(&relative))
            .map_err(errno)
    }

    /// Applies the pending writes of `inode` to the backing file and fdatasyncs it.
    fn sync(&mut self, inode: u64) -> Result<(), Errno> {
        let Some(writes) = self.pending.remove(&inode) else {
            return Ok(());
        };
        let file = self.open_backing(inode)?;
        for (offset, data) in writes {
            file.write_all_at(&data, offset).map_err(errno)?;
        }
        file.sync_data().map_err(errno)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(parent)?.join(name))
    }

    /// A path changed name: so do the paths below it.
    fn renamed(&mut self, from: &Path, to: &Path) {
        let moved: Vec<(PathBuf, u64)> = self
            .inodes
            .iter()
            .filter(|(path, _)| path.starts_with(from))
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        for (path, inode) in moved {
            let new = to.join(path.strip_prefix(from).expect("prefix checked"));
            self.inodes.remove(&path);
            self.inodes.insert(new.clone(), inode);
            self.paths.insert(inode, new);
        }
    }

    fn forget_path(&mut self, relative: &Path) {
        if let Some(inode) = self.inodes.remove(relative) {
            self.paths.remove(&inode);
            self.pending.remove(&inode);
        }
    }
}

impl LossyFs {
    fn entry(&self, relative: PathBuf, reply: ReplyEntry) {
        let mut inner = self.0.lock().unwrap();
        if let Err(err) = std::fs::symlink_metadata(inner.full(&relative)) {
            return reply.error(errno(err));
        }
        let inode = inner.inode_of(relative);
        match inner.attr(inode) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(err) => reply.error(err),
        }
    }
}

impl LossyFs {
    /// Removes `name` under `parent` from the backing directory with `how`
    /// (a file or a directory), and forgets its inode and pending writes.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        how: impl Fn(&Path) -> std::io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let mut inner = self.0.lock().unwrap();
        let result = inner.child(parent.0, name).and_then(|relative| {
            how(&inner.full(&relative)).map_err(errno)?;
            inner.forget_path(&relative);
            Ok(())
        });
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }
}

impl Filesystem for LossyFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let child = self.0.lock().unwrap().child(parent.0, name);
        match child {
            Ok(relative) => self.entry(relative, reply),
            Err(err) => reply.error(err),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.lock().unwrap().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut inner = self.0.lock().unwrap();
        let result = (|| {
            let relative = inner.path(ino.0)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(
                    inner.full(&relative),
                    std::fs::Permissions::from_mode(mode),
                )
                .map_err(errno)?;
            }
            if let Some(size) = size {
                inner.sync(ino.0)?;
                inner.open_backing(ino.0)?.set_len(size).map_err(errno)?;
            }
            inner.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(err) => reply.error(err),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let relative = match self.0.lock().unwrap().child(parent.0, name) {
            Ok(relative) => relative,
            Err(err) => return reply.error(err),
        };
        let full = self.0.lock().unwrap().full(&relative);
        if let Err(err) = std::fs::create_dir(&full) {
            return reply.error(errno(err));
        }
        let _ = std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode));
        self.entry(relative, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |path| std::fs::remove_file(path), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, |path| std::fs::remove_dir(path), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut inner = self.0.lock().unwrap();
        let result = (|| {
            let from = inner.child(parent.0, name)?;
            let to = inner.child(newparent.0, newname)?;
            std::fs::rename(inner.full(&from), inner.full(&to)).map_err(errno)?;
            inner.forget_path(&to);
            inner.renamed(&from, &to);
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        // No page cache: every read and write comes here, so a power cut
        // loses exactly what this process holds.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut inner = self.0.lock().unwrap();
        let result = (|| {
            let relative = inner.child(parent.0, name)?;
            let full = inner.full(&relative);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true);
            if flags & libc::O_EXCL != 0 {
                options.create_new(true);
            }
            if flags & libc::O_TRUNC != 0 {
                options.truncate(true);
            }
            options.open(&full).map_err(errno)?;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & 0o7777))
                .map_err(errno)?;
            let inode = inner.inode_of(relative);
            if flags & libc::O_TRUNC != 0 {
                inner.pending.remove(&inode);
            }
            inner.attr(inode)
        })();
        match result {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(err) => reply.error(err),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let inner = self.0.lock().unwrap();
        let result = (|| {
            let size_now = inner.attr(ino.0)?.size;
            let end = (offset + size as u64).min(size_now);
            if end <= offset {
                return Ok(Vec::new());
            }
            let mut buf = vec![0u8; (end - offset) as usize];
            let file = inner.open_backing(ino.0)?;
            let mut done = 0;
            while done < buf.len() {
                let n = file
                    .read_at(&mut buf[done..], offset + done as u64)
                    .map_err(errno)?;
                if n == 0 {
                    break; // past the backing file's end: zeros (or pending data below)
                }
                done += n;
            }
            for (at, data) in inner.pending.get(&ino.0).into_iter().flatten() {
                let (start, stop) = ((*at).max(offset), (at + data.len() as u64).min(end));
                if start < stop {
                    buf[(start - offset) as usize..(stop - offset) as usize]
                        .copy_from_slice(&data[(start - at) as usize..(stop - at) as usize]);
                }
            }
            Ok(buf)
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(err),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        if FAILING.load(Ordering::SeqCst) {
            return reply.error(Errno::EIO);
        }
        let mut inner = self.0.lock().unwrap();
        if !inner.paths.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        inner
            .pending
            .entry(ino.0)
            .or_default()
            .push((offset, data.to_vec()));
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // close(2) makes nothing durable
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if FAILING.load(Ordering::SeqCst) {
            return reply.error(Errno::EIO);
        }
        match self.0.lock().unwrap().sync(ino.0) {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // metadata is durable at once (see the module doc)
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut inner = self.0.lock().unwrap();
        let relative = match inner.path(ino.0) {
            Ok(relative) => relative,
            Err(err) => return reply.error(err),
        };
        let entries = match std::fs::read_dir(inner.full(&relative)) {
            Ok(entries) => entries,
            Err(err) => return reply.error(errno(err)),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsStr::new(".").to_os_string()),
            (1, FileType::Directory, OsStr::new("..").to_os_string()),
        ];
        for entry in entries.flatten() {
            let kind = match entry.file_type() {
                Ok(kind) if kind.is_dir() => FileType::Directory,
                Ok(kind) if kind.is_symlink() => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            let inode = inner.inode_of(relative.join(entry.file_name()));
            all.push((inode, kind, entry.file_name()));
        }
        for (index, (inode, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(inode), index as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let backing = self.0.lock().unwrap().backing.clone();
        let path = std::ffi::CString::new(backing.as_os_str().as_bytes()).unwrap();
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs writes into the struct we pass.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            stat.f_blocks,
            stat.f_bfree,
            stat.f_bavail,
            stat.f_files,
            stat.f_ffree,
            stat.f_bsize as u32,
            255,
            stat.f_frsize as u32,
        );
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
        let mut inner = self.0.lock().unwrap();
        let result = (|| {
            inner.sync(ino.0)?;
            let file = inner.open_backing(ino.0)?;
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a file we hold open.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    mode,
                    offset as libc::off_t,
                    length as libc::off_t,
                )
            };
            if rc != 0 {
                return Err(errno(std::io::Error::last_os_error()));
            }
            Ok(())
        })();
        match result {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(err),
        }
    }
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// While set, writes and fsyncs fail with EIO (SIGUSR2 toggles it).
static FAILING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(signal: i32) {
    if signal == libc::SIGUSR2 {
        FAILING.fetch_xor(true, Ordering::SeqCst);
    } else {
        SIGNAL.store(signal, Ordering::SeqCst);
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint] = args.as_slice() else {
        eprintln!("usage: lossyfs BACKING MOUNTPOINT");
        std::process::exit(2);
    };
    let backing = std::fs::canonicalize(backing)?;
    let mut inner = Inner {
        backing,
        paths: HashMap::new(),
        inodes: HashMap::new(),
        next_inode: 2,
        pending: HashMap::new(),
    };
    inner.paths.insert(1, PathBuf::new());
    inner.inodes.insert(PathBuf::new(), 1);
    let fs = LossyFs(Mutex::new(inner));
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("lossyfs".into()),
        MountOption::DefaultPermissions,
    ];
    // SAFETY: the handler only stores into an atomic.
    unsafe {
        libc::signal(libc::SIGUSR1, on_signal as *const () as usize);
        libc::signal(libc::SIGTERM, on_signal as *const () as usize);
        libc::signal(libc::SIGUSR2, on_signal as *const () as usize);
    }
    let session = fuser::spawn_mount(fs, mountpoint, &config)?;
    eprintln!("lossyfs: mounted on {mountpoint}");
    loop {
        match SIGNAL.load(Ordering::SeqCst) {
            libc::SIGUSR1 => {
                eprintln!("lossyfs: power cut; unsynced writes are gone");
                std::process::exit(0);
            }
            libc::SIGTERM => break,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    drop(session);
    Ok(())
}
