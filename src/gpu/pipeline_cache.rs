//! Compiled pipelines kept across runs: wgpu's `PIPELINE_CACHE` (Vulkan
//! adapters), loaded when a device opens and written back once its kernels
//! are built, so that a second run skips the driver's compilation.
//!
//! The file lives beside the tuning cache (`SHADERTRAIN_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/shadertrain`, else `~/.cache/shadertrain`), named by
//! `wgpu::util::pipeline_cache_key` (vendor and device), e.g.
//! `wgpu_pipeline_cache_vulkan_65541_0.bin`. `SHADERTRAIN_PIPELINE_CACHE=off`
//! turns it off.
//!
//! wgpu checks its own header (adapter, driver, wgpu's format) but not the
//! bytes behind it, which go to the driver as they are. So the file wraps
//! them in an envelope of ours: [`MAGIC`], the length and an FNV-1a hash of
//! the bytes. A file that is not a regular file, too large, torn, or whose
//! hash does not match is ignored with one line on stderr, never an error;
//! only bytes that a `get_data` wrote reach `create_pipeline_cache`. Writes
//! go through a temporary file and a rename, so concurrent runs never tear it.

use crate::fsutil;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The envelope's first bytes.
pub const MAGIC: &[u8; 8] = b"STPIPE01";

/// Bytes before the payload: magic, length (u64 LE), FNV-1a hash (u64 LE).
const HEAD: usize = 24;

/// The largest file read (a driver's cache of our few dozen pipelines is a
/// few MiB).
const MAX_BYTES: u64 = 256 << 20;

/// What happened to the cache file when the device opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// Its pipelines were handed to the driver.
    Read,
    /// None was there yet (or it was ignored): this run writes one.
    Fresh,
}

/// A device's pipeline cache and where it is kept.
pub struct PipelineStore {
    cache: wgpu::PipelineCache,
    /// `None` where there is no cache directory: kept in memory only.
    path: Option<PathBuf>,
    loaded: Loaded,
    /// The hash of the bytes last read or written, to skip unchanged writes.
    last: Mutex<Option<u64>>,
}

/// Whether `SHADERTRAIN_PIPELINE_CACHE` turns the cache off (`off`, `0`, `no`).
pub fn disabled_by_env() -> bool {
    std::env::var("SHADERTRAIN_PIPELINE_CACHE")
        .map(|v| matches!(v.trim(), "off" | "0" | "no" | "false"))
        .unwrap_or(false)
}

/// `bytes` in the envelope.
pub fn wrap(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEAD + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&super::tune::fnv1a64(bytes).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The payload of an envelope, or why it is not one.
pub fn unwrap(file: &[u8]) -> std::result::Result<&[u8], &'static str> {
    if file.len() < HEAD || &file[..8] != MAGIC {
        return Err("not a shadertrain pipeline cache");
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&file[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let payload = &file[HEAD..];
    if word(8) != payload.len() as u64 {
        return Err("truncated or extended");
    }
    if word(16) != super::tune::fnv1a64(payload) {
        return Err("its contents do not match their hash");
    }
    Ok(payload)
}

/// The envelope's payload at `path`: `Ok(None)` where there is no file.
/// Anything but a regular file (a FIFO would block the read) is refused
/// before it is opened.
fn read(path: &Path) -> std::result::Result<Option<Vec<u8>>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_BYTES {
        return Err(format!("{} bytes, over the {MAX_BYTES} read", meta.len()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    unwrap(&bytes)
        .map(|p| Some(p.to_vec()))
        .map_err(String::from)
}

impl PipelineStore {
    /// The cache of a device on `info` that has `PIPELINE_CACHE`, kept in
    /// `dir` (`None`: in memory only); `None` where the device lacks the
    /// feature or the environment turns it off.
    pub fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        dir: Option<&Path>,
    ) -> Option<PipelineStore> {
        if disabled_by_env() || !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        let name = wgpu::util::pipeline_cache_key(info)?;
        let path = dir.map(|d| d.join(format!("{name}.bin")));
        let data = path.as_deref().and_then(|p| {
            read(p).unwrap_or_else(|why| {
                eprintln!("pipeline cache {}: {why}; ignored", p.display());
                None
            })
        });
        let desc = wgpu::PipelineCacheDescriptor {
            label: Some("shadertrain pipelines"),
            data: data.as_deref(),
            // Data the driver no longer takes (an update) starts an empty cache.
            fallback: true,
        };
        // SAFETY: `data` is either absent or bytes that `get_data` returned
        // on an adapter with this `pipeline_cache_key` (the file is named by
        // it), unchanged: the envelope's hash matched. wgpu checks its own
        // header against this adapter and driver and falls back to an empty
        // cache where they differ.
        let cache = unsafe { device.create_pipeline_cache(&desc) };
        let last = data.as_deref().map(super::tune::fnv1a64);
        Some(PipelineStore {
            cache,
            path,
            loaded: if data.is_some() {
                Loaded::Read
            } else {
                Loaded::Fresh
            },
            last: Mutex::new(last),
        })
    }

    /// The cache to build pipelines with.
    pub fn cache(&self) -> &wgpu::PipelineCache {
        &self.cache
    }

    /// Whether the file was read when the device opened.
    pub fn loaded(&self) -> Loaded {
        self.loaded
    }

    /// Where the cache is kept, if on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Write the cache back if it changed since it was read or last written.
    /// A failure is one line on stderr: the run goes on without it.
    pub fn save(&self) {
        let (Some(path), Some(data)) = (&self.path, self.cache.get_data()) else {
            return;
        };
        let hash = super::tune::fnv1a64(&data);
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        if *last == Some(hash) {
            return;
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .map_err(|e| e.to_string())
            .and_then(|_| fsutil::write_atomic(path, &wrap(&data)).map_err(|e| e.to_string()));
        match written {
            Ok(()) => *last = Some(hash),
            Err(why) => {
                eprintln!("pipeline cache {}: not written: {why}", path.display());
                // Said once: the next save tries again only if the data changes.
                *last = Some(hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_refuses_damage() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = wrap(&data);
        assert_eq!(unwrap(&file).unwrap(), &data[..]);
        assert_eq!(unwrap(&wrap(&[])).unwrap(), &[] as &[u8]);
        let mut flipped = file.clone();
        flipped[HEAD + 500] ^= 1;
        assert_eq!(
            unwrap(&flipped),
            Err("its contents do not match their hash")
        );
        assert_eq!(
            unwrap(&file[..file.len() - 1]),
            Err("truncated or extended")
        );
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(unwrap(&longer), Err("truncated or extended"));
        assert_eq!(unwrap(&file[..10]), Err("not a shadertrain pipeline cache"));
        assert_eq!(unwrap(b""), Err("not a shadertrain pipeline cache"));
    }
}
