//! SIGINT and SIGTERM for `train`: the first asks the run to stop after its
//! current step (the [`shadertrain::Trainer::stop_when`] flag), so that the
//! checkpoint, the metrics and the plot are written and the program exits
//! 130 (SIGINT) or 143 (SIGTERM); a second exits at once with that status,
//! removing the temporary files of any output being written.

use shadertrain::{fsutil, Error, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

/// The installed handlers' shared state.
pub struct Interrupt {
    /// Set by the first signal; the trainer's stop flag.
    pub flag: Arc<AtomicBool>,
    /// The first signal's number, 0 before one arrives.
    signal: Arc<AtomicI32>,
}

impl Interrupt {
    /// Handles SIGINT and SIGTERM from now on; `outputs` are the files the
    /// run writes through temporary files, whose temporaries a second signal
    /// removes before it exits.
    pub fn install(outputs: &[&Path]) -> Result<Interrupt> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let flag = Arc::new(AtomicBool::new(false));
        let signal = Arc::new(AtomicI32::new(0));
        // Made here, not in the handler: it may not allocate.
        let temps: Vec<CString> = outputs
            .iter()
            .filter_map(|p| CString::new(fsutil::temp_path(p).as_os_str().as_bytes()).ok())
            .collect();
        let temps = Arc::new(temps);
        for sig in [SIGINT, SIGTERM] {
            let (flag, signal, temps) = (flag.clone(), signal.clone(), temps.clone());
            let handler = move || {
                if signal
                    .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
                {
                    // The second signal: unlink(2) and _exit(2) are
                    // async-signal-safe.
                    for t in temps.iter() {
                        // SAFETY: a valid NUL-terminated path.
                        unsafe { libc_unlink(t.as_ptr()) };
                    }
                    signal_hook::low_level::exit(128 + signal.load(Ordering::SeqCst));
                }
                flag.store(true, Ordering::SeqCst);
            };
            // SAFETY: the handler only touches atomics, unlinks and exits.
            unsafe { signal_hook::low_level::register(sig, handler) }
                .map_err(|e| Error::Invalid(format!("cannot handle signal {sig}: {e}")))?;
        }
        Ok(Interrupt { flag, signal })
    }

    /// The first signal's name and the exit status it asks for, once one arrived.
    pub fn received(&self) -> Option<(&'static str, u8)> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            signal_hook::consts::SIGINT => Some(("SIGINT", 130)),
            signal_hook::consts::SIGTERM => Some(("SIGTERM", 143)),
            n => Some(("a signal", (128 + n).clamp(0, 255) as u8)),
        }
    }
}

extern "C" {
    #[link_name = "unlink"]
    fn libc_unlink(path: *const std::ffi::c_char) -> i32;
}
