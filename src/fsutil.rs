//! Atomic file writes: every output (checkpoint, metrics, plot, predictions)
//! goes through a temporary file beside its target, fsynced, then renamed, so
//! a crash or a kill never leaves half a file under the real name.

use crate::error::{Error, Result};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory,
/// flushed and fsynced before the rename, so a crash never leaves half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = sibling_temp(path);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Some(d) = tmp.parent().and_then(|d| std::fs::File::open(d).ok()) {
            let _ = d.sync_all();
        }
        remove_stale_temps(path);
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Removes the temporary files that writers of `path` killed mid-write left
/// behind (`.PID.tmp.NAME` whose process is gone). Best effort: Linux only,
/// where `/proc/PID` says whether a process is alive.
fn remove_stale_temps(path: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let tmp = sibling_temp(path);
    let (Some(dir), Some(name)) = (tmp.parent(), path.file_name()) else {
        return;
    };
    let suffix = format!(".tmp.{}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let pid = file
            .strip_prefix('.')
            .and_then(|f| f.strip_suffix(&suffix))
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if let Some(pid) = pid {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// A temporary name beside `path` (same directory, so a rename is atomic),
/// ending like `path` so tools that go by the extension still recognise it.
pub(crate) fn sibling_temp(path: &Path) -> std::path::PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    dir.join(format!(".{}.tmp.{name}", std::process::id()))
}
