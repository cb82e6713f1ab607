//! Outputs that are safe to point anywhere, written atomically.
//!
//! Every output (checkpoint, metrics, plot, predictions, exports) goes through
//! a [`TempFile`] beside its target: written, fsynced, renamed over the
//! target, the directory fsynced, so a crash or a kill never leaves half a
//! file under the real name. [`check_output`] proves a target can be written
//! this way before any work starts.
//!
//! - A symbolic link is written through: the temporary file goes beside the
//!   file the link names and is renamed over it, so the link stays a link.
//! - An existing file keeps its permission bits (a 0600 checkpoint stays 0600).
//! - A target that exists and is not a regular file (a directory, a device
//!   such as `/dev/null`, a FIFO, a socket) is refused: a rename would
//!   replace it.
//! - Temporary names have a fixed length (`.` + 16 hex digits of the target's
//!   name + `.` + 16 unique hex digits + `.tmp` + the target's extension), so
//!   any name the file system accepts can be written.
//! - Each writer holds an exclusive lock (`flock`) on its temporary file until
//!   the rename. A writer that finishes removes the temporary files of its
//!   target that it can lock: those whose writer died (the kernel drops a
//!   dead process's locks). A live writer's file is never removed, whatever
//!   PID namespace it runs in.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` through a [`TempFile`] beside it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.file()
        .write_all(bytes)
        .map_err(|e| Error::io(path, e))?;
    tmp.commit()
}

/// Checks, before any work, that `path` can be written as an output: it is
/// not a directory, nor an existing file that is not a regular one (a
/// device, a FIFO, a socket); its name fits the file system; its directory
/// exists and takes a temporary file, proved by creating and removing one.
/// Symbolic links are followed. The error is an [`Error::Io`] for `path`.
pub fn check_output(path: &Path) -> Result<()> {
    let target = resolve(path);
    let refuse = |msg: String| Err(Error::io(path, io::Error::other(msg)));
    if path.as_os_str().is_empty() {
        return refuse("an empty name".into());
    }
    // The kernel follows the links here, /proc's magic ones (/dev/stdout) too.
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return refuse("is a directory, not a file".into()),
        Ok(m) if !m.is_file() => {
            return refuse(
                "exists and is not a regular file (a device, FIFO or socket); an output is written through a temporary file and a rename, which would replace it".into(),
            )
        }
        _ => {}
    }
    let dir = parent_of(&target);
    if !dir.is_dir() {
        return refuse(format!("directory {} does not exist", dir.display()));
    }
    let name_len = target.file_name().map_or(0, |n| n.len());
    if name_len > name_max(dir) {
        return Err(Error::io(path, name_too_long()));
    }
    TempFile::beside(path).map(drop).map_err(|e| match e {
        Error::Io { source, .. } => Error::io(
            path,
            io::Error::new(
                source.kind(),
                format!("cannot create a file in {}: {source}", dir.display()),
            ),
        ),
        e => e,
    })
}

/// Whether `a` and `b` name one file: the same file (device and inode) where
/// both exist, else the same name in the same real directory. Symbolic links
/// are followed.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y),
        (Err(_), Err(_)) => real_name(a).is_some() && real_name(a) == real_name(b),
        _ => false,
    }
}

/// A file that does not exist yet, as its real directory and its name.
fn real_name(p: &Path) -> Option<PathBuf> {
    let t = resolve(p);
    Some(parent_of(&t).canonicalize().ok()?.join(t.file_name()?))
}

/// `path` with its last component's symbolic links followed (up to 40),
/// the file a write through it reaches. A path that is not a link is itself.
pub fn resolve(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::read_link(&p) {
            Ok(t) if t.is_absolute() => p = t,
            Ok(t) => p = parent_of(&p).join(t),
            Err(_) => break,
        }
    }
    p
}

/// The directory of `path`: `.` for a bare name.
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// A temporary file beside an output's target (the file a link names), held
/// locked by this writer until [`TempFile::commit`] renames it over the
/// target; dropped uncommitted, it is removed.
pub struct TempFile {
    target: PathBuf,
    /// As the caller named it, for messages.
    shown: PathBuf,
    path: PathBuf,
    file: File,
    done: bool,
}

impl TempFile {
    /// Creates and locks a new temporary file beside `path`'s target, with
    /// the permission bits of the target when it exists.
    pub fn beside(path: &Path) -> Result<TempFile> {
        let target = resolve(path);
        let dir = parent_of(&target).to_path_buf();
        let perms = std::fs::metadata(&target)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.permissions());
        let err = |e| Error::io(path, e);
        for attempt in 0..16 {
            // This process's name first, which a signal handler can know in
            // advance (`temp_path`); a unique one if that is taken.
            let u = match attempt {
                0 => u64::from(std::process::id()),
                _ => unique(),
            };
            let tmp = dir.join(temp_name(&target, u));
            let mut open = OpenOptions::new();
            open.write(true).create_new(true);
            #[cfg(unix)]
            if let Some(p) = &perms {
                use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
                open.mode(p.mode() & 0o7777);
            }
            let file = match open.open(&tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(e)),
            };
            // Another writer's cleanup may have taken the file between its
            // creation and the lock: then it is gone, and we start again.
            if !try_lock(&file).map_err(err)? || !is_at(&file, &tmp) {
                continue;
            }
            if let Some(p) = perms {
                file.set_permissions(p).map_err(err)?;
            }
            return Ok(TempFile {
                target,
                shown: path.to_path_buf(),
                path: tmp,
                file,
                done: false,
            });
        }
        Err(err(io::Error::other(
            "cannot create a temporary file beside it",
        )))
    }

    /// The temporary file's path (for writers that open it by name).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open, locked temporary file.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Fsyncs the temporary file, renames it over the target, fsyncs the
    /// directory, then removes temporary files of the same target that no
    /// live writer holds.
    pub fn commit(mut self) -> Result<()> {
        let err = |e| Error::io(&self.shown, e);
        self.file.sync_all().map_err(err)?;
        std::fs::rename(&self.path, &self.target).map_err(err)?;
        self.done = true;
        if let Ok(d) = File::open(parent_of(&self.target)) {
            let _ = d.sync_all();
        }
        remove_stale_temps(&self.target);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `.HASH.UNIQUE.tmp.EXT`: the hash of the target's name (shared by every
/// writer of the target, so cleanup finds them), a unique part, and the
/// target's extension (tools that go by it still recognise the file); a
/// fixed length whatever the target's name.
/// The temporary file this process first tries when it writes `path`
/// ([`TempFile::beside`]): beside the target (the file a link names), named
/// from the target's name and the process id. Known before the write
/// starts, so a signal handler can remove it without allocating.
pub fn temp_path(path: &Path) -> PathBuf {
    let target = resolve(path);
    parent_of(&target).join(temp_name(&target, u64::from(std::process::id())))
}

fn temp_name(target: &Path, unique: u64) -> String {
    let name = target.file_name().unwrap_or_default();
    let ext = target
        .extension()
        .map(|e| e.to_string_lossy().to_string())
        .filter(|e| e.len() <= 16 && e.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map_or(String::new(), |e| format!(".{e}"));
    format!(
        "{}{unique:016x}.tmp{ext}",
        temp_prefix(name.as_encoded_bytes())
    )
}

/// The start of every temporary name of a target named `name`.
fn temp_prefix(name: &[u8]) -> String {
    format!(".{:016x}.", fnv1a(name))
}

/// FNV-1a, 64 bits: a hash that stays the same across builds and versions.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A value no other temporary file beside the target is likely to have
/// (creation refuses an existing name anyway): the process, the time, a count.
fn unique() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let mut bytes = Vec::with_capacity(24);
    for v in [u64::from(std::process::id()), nanos, n] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    fnv1a(&bytes)
}

/// Removes the temporary files of `target` that no writer holds locked:
/// those whose writer died mid-write. Best effort.
fn remove_stale_temps(target: &Path) {
    if !cfg!(unix) {
        return;
    }
    let (dir, Some(name)) = (parent_of(target), target.file_name()) else {
        return;
    };
    let prefix = temp_prefix(name.as_encoded_bytes());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let file = file.to_string_lossy();
        if !file.starts_with(&prefix) || !file.contains(".tmp") {
            continue;
        }
        let path = e.path();
        if let Ok(f) = File::open(&path) {
            if matches!(try_lock(&f), Ok(true)) && is_at(&f, &path) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Takes `f`'s exclusive lock without waiting: `false` when another open
/// file holds it. Where there are no such locks, always (and
/// [`remove_stale_temps`] removes nothing).
#[cfg(unix)]
fn try_lock(f: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor that `f` keeps open.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(unix))]
fn try_lock(_: &File) -> io::Result<bool> {
    Ok(true)
}

/// Whether `path` still names the open file `f`.
fn is_at(f: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        matches!((f.metadata(), std::fs::symlink_metadata(path)),
            (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = f;
        path.exists()
    }
}

/// The longest file name `dir`'s file system takes.
fn name_max(dir: &Path) -> usize {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        if let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) {
            // SAFETY: pathconf reads a NUL-terminated path.
            let n = unsafe { libc::pathconf(c.as_ptr(), libc::_PC_NAME_MAX) };
            if n > 0 {
                return n as usize;
            }
        }
    }
    let _ = dir;
    255
}

fn name_too_long() -> io::Error {
    #[cfg(unix)]
    {
        io::Error::from_raw_os_error(libc::ENAMETOOLONG)
    }
    #[cfg(not(unix))]
    {
        io::Error::other("file name too long")
    }
}
