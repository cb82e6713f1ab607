//! Host memory: sizes are added up with overflow checks and compared with
//! what the machine has before the large buffers are allocated, so a batch or
//! a network that cannot fit is an [`Error::Memory`] naming what needed how
//! much, not an allocator abort or a visit from the OOM killer.
//!
//! `SHADERTRAIN_MEMORY_LIMIT` is a budget for the whole process: the data
//! sets it holds in memory count against it ([`Held`]), so what a network or
//! a batch may use afterwards is the limit less the data. Memory-mapped
//! arrays do not count: the kernel pages them in and out.

use crate::error::{Error, Result, Setting};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes held by live [`Held`] reservations.
static HELD: AtomicU64 = AtomicU64::new(0);

/// A reservation of `bytes` held by something that lives in memory (a data
/// set's tables), counted against `SHADERTRAIN_MEMORY_LIMIT` until dropped.
/// A clone counts again: it stands for a copy of the data.
#[derive(Debug)]
pub struct Held(u64);

impl Held {
    /// Counts `bytes` as held until the value is dropped.
    pub fn new(bytes: u64) -> Held {
        HELD.fetch_add(bytes, Ordering::Relaxed);
        Held(bytes)
    }

    /// The bytes counted.
    pub fn bytes(&self) -> u64 {
        self.0
    }
}

impl Clone for Held {
    fn clone(&self) -> Held {
        Held::new(self.0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.fetch_sub(self.0, Ordering::Relaxed);
    }
}

/// Bytes all live [`Held`] reservations count.
pub fn held() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// Bytes of `count` values of `size` bytes each, as a sum over `(count, size)`
/// pairs; `None` when the sum overflows (it could never be allocated).
pub fn bytes(parts: &[(usize, usize)]) -> Option<u64> {
    parts.iter().try_fold(0u64, |sum, &(count, size)| {
        let b = (count as u64).checked_mul(size as u64)?;
        sum.checked_add(b)
    })
}

/// Memory that may be used: what the kernel says can be allocated without
/// swapping (`MemAvailable` in `/proc/meminfo`, which already reflects what
/// this process holds), capped by `SHADERTRAIN_MEMORY_LIMIT` (bytes) less
/// what the data in memory holds ([`held`]) when set, e.g. on a shared
/// machine; `None` where neither is known.
pub fn available() -> Option<u64> {
    let cap = limit().ok().flatten().map(|c| c.saturating_sub(held()));
    let os = (|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    })();
    match (os, cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `SHADERTRAIN_MEMORY_LIMIT` in bytes, if set; a value that is not a
/// whole number of bytes is an error ([`ensure`] reports it).
fn limit() -> Result<Option<u64>> {
    match std::env::var("SHADERTRAIN_MEMORY_LIMIT") {
        Err(_) => Ok(None),
        Ok(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            Error::Invalid(format!(
                "SHADERTRAIN_MEMORY_LIMIT={:?} is not a number of bytes",
                crate::error::one_line(&v, 40)
            ))
        }),
    }
}

/// `n` bytes for people: `512 B`, `3.2 MiB`, `14.4 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuse `need` bytes (`None`: more than can be counted) for `what` when the
/// machine does not have them available; `shrink` names the settings to lower.
pub fn ensure(need: Option<u64>, what: &str, shrink: &'static [Setting]) -> Result<()> {
    limit()?;
    let Some(need) = need else {
        return Err(Error::memory(
            format!("{what} needs more bytes than a 64-bit size can count"),
            shrink,
        ));
    };
    match available() {
        Some(have) if need > have => {
            // Say where the limit went when the data took part of it.
            let data = held();
            let note = match limit().ok().flatten() {
                Some(cap) if data > 0 && have == cap.saturating_sub(data) => format!(
                    " (SHADERTRAIN_MEMORY_LIMIT's {} less the {} the data holds)",
                    human(cap),
                    human(data)
                ),
                _ => String::new(),
            };
            Err(Error::memory(
                format!(
                    "{what} needs {} but {} is available{note}",
                    human(need),
                    human(have)
                ),
                shrink,
            ))
        }
        _ => Ok(()),
    }
}

/// Refuse a network whose `copies` host copies of the f32 parameters (an
/// initialisation, a read-back, ...) the machine cannot hold.
pub fn ensure_params(net: &crate::network::Network, copies: usize) -> Result<()> {
    let need = bytes(&[(net.param_count(), copies.saturating_mul(4))]);
    let what = format!("{} ({} parameters)", net.describe(), net.param_count());
    ensure(need, &what, &[Setting::Layers])
}

/// `n` zeroed values, or an [`Error::Memory`] when the allocator refuses
/// (where [`available`] is unknown, this is what catches an impossible size).
pub fn zeroed<T: Clone + bytemuck::Zeroable>(
    n: usize,
    what: &str,
    shrink: &'static [Setting],
) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        let need = bytes(&[(n, std::mem::size_of::<T>())]);
        let need = need.map_or_else(|| "that much".to_string(), human);
        Error::memory(format!("cannot allocate {need} for {what}"), shrink)
    })?;
    v.resize(n, T::zeroed());
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_overflow_to_none() {
        assert_eq!(bytes(&[(3, 4), (2, 8)]), Some(28));
        assert_eq!(bytes(&[(usize::MAX, 8)]), None);
        assert_eq!(
            bytes(&[(usize::MAX / 2, 1), (usize::MAX / 2, 1), (usize::MAX, 1)]),
            None
        );
    }

    #[test]
    fn impossible_requests_are_errors() {
        let e = ensure(None, "the thing", &[Setting::Batch])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the thing") && e.contains("smaller batch size"),
            "{e}"
        );
        if let Some(have) = available() {
            assert!(have > 0);
            let e = ensure(Some(have.saturating_mul(4)), "x", &[]).unwrap_err();
            assert!(e.to_string().contains("is available"), "{e}");
            assert!(ensure(Some(1), "x", &[]).is_ok());
        }
        let e = zeroed::<f32>(usize::MAX / 4, "a buffer", &[Setting::Layers]).unwrap_err();
        assert!(e.to_string().contains("cannot allocate"), "{e}");
        assert_eq!(zeroed::<f32>(3, "a", &[]).unwrap(), vec![0.0; 3]);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(human(15_461_882_266), "14.4 GiB");
    }
}
