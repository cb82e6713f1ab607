//! Running the `shadertrain` binary from tests: capture its output, check
//! a clean one-line failure, and find out whether a GPU test can run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

#[path = "../common/device_macro.rs"]
mod device_macro;
#[allow(unused_imports)]
pub(crate) use device_macro::test_device;

/// A fresh directory under the system temp dir, named after the process and
/// the test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("shadertrain-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `contents` to `name` in this directory; return the path as a string.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.to_string_lossy().into_owned()
    }

    /// The names of the files in this directory, sorted.
    pub fn listing(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// What one run of the binary did.
pub struct Run {
    pub args: Vec<String>,
    pub out: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Everything about the run, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "command: shadertrain {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.args.join(" "),
            self.out.status,
            self.stdout(),
            self.stderr()
        )
    }

    /// Assert the run exited 0.
    pub fn success(self) -> Run {
        assert!(
            self.out.status.success(),
            "expected success\n{}",
            self.dump()
        );
        self
    }

    /// The stdout parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout())
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.dump()))
    }

    /// The stderr lines that are ours, without the driver's noise.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| !l.trim().is_empty() && !is_driver_noise(l))
            .map(str::to_owned)
            .collect()
    }
}

/// Lines Mesa/lavapipe may print on their own.
pub fn is_driver_noise(line: &str) -> bool {
    line.contains("XDG_RUNTIME_DIR")
        || line.starts_with("MESA")
        || line.starts_with("WARNING: lavapipe")
}

/// Run the binary with `args`.
pub fn run<S: AsRef<str>>(args: &[S]) -> Run {
    run_env(args, &[])
}

/// The binary: `SHADERTRAIN_BIN` if set; else the one cargo built; else, for
/// test binaries copied elsewhere (the lent-GPU runs), `../shadertrain` beside
/// the test binary's folder.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHADERTRAIN_BIN") {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_shadertrain"));
    if built.exists() {
        return built;
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("shadertrain")))
        .filter(|p| p.exists())
        .unwrap_or(built)
}

/// A tuning cache directory no test writes: runs see no user's cache
/// unless a test gives `SHADERTRAIN_CACHE_DIR` itself.
pub fn empty_cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("shadertrain-test-{}-no-cache", std::process::id()))
}

/// Run the binary with `args` and extra environment variables.
pub fn run_env<S: AsRef<str>>(args: &[S], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let out = Command::new(bin())
        .args(&args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("SHADERTRAIN_CACHE_DIR", empty_cache_dir())
        // Nor a pipeline cache, which would make that directory.
        .env("SHADERTRAIN_PIPELINE_CACHE", "off")
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("cannot run shadertrain {}: {e}", args.join(" ")));
    Run { args, out }
}

/// Runs the binary with `args` and `input` on its standard input (written
/// by a thread of its own: the program may stop reading early).
pub fn run_stdin(args: &[&str], input: &[u8], env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shadertrain");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Assert that `args` fails cleanly: a non-zero exit, no panic, and exactly
/// one stderr line, starting with `error:` and containing every word of `expect`.
pub fn expect_error<S: AsRef<str>>(args: &[S], expect: &[&str]) -> String {
    expect_error_env(args, &[], expect)
}

/// [`expect_error`] with extra environment variables.
pub fn expect_error_env<S: AsRef<str>>(
    args: &[S],
    env: &[(&str, &str)],
    expect: &[&str],
) -> String {
    let r = run_env(args, env);
    assert!(
        !r.out.status.success(),
        "expected a non-zero exit\n{}",
        r.dump()
    );
    assert!(
        r.out.status.code().is_some(),
        "killed by a signal instead of exiting\n{}",
        r.dump()
    );
    assert!(
        !r.stderr().contains("panicked"),
        "the binary panicked\n{}",
        r.dump()
    );
    let lines = r.stderr_lines();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got {lines:?}\n{}",
        r.dump()
    );
    let line = &lines[0];
    assert!(
        line.starts_with("error:") && line.len() > "error:".len(),
        "the stderr line must start with 'error:' and say something\n{}",
        r.dump()
    );
    for word in expect {
        assert!(
            line.contains(word),
            "the error line should mention {word:?}\n{}",
            r.dump()
        );
    }
    line.clone()
}

// ---------------------------------------------------------------------------
// GPU availability
// ---------------------------------------------------------------------------

/// `None` if `devices --json` lists an adapter with `"compute": true`, else why not.
pub fn gpu_missing() -> &'static Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let r = run(&["devices", "--json"]);
        if !r.out.status.success() {
            return Some(format!("`devices --json` failed: {}", r.stderr().trim()));
        }
        let list: Value = match serde_json::from_str(&r.stdout()) {
            Ok(v) => v,
            Err(e) => return Some(format!("`devices --json` printed no JSON: {e}")),
        };
        let adapters = list.as_array().cloned().unwrap_or_default();
        if adapters.iter().any(|a| a["compute"] == Value::Bool(true)) {
            None
        } else {
            Some(format!(
                "`devices --json` lists {} adapter(s), none with compute",
                adapters.len()
            ))
        }
    })
}

/// True if a GPU test can run. Without a GPU: panics if `REQUIRE_GPU=1`,
/// else prints `skipped: no GPU adapter (...)` and returns false.
pub fn gpu_or_skip(test: &str) -> bool {
    match gpu_missing() {
        None => true,
        Some(why) => {
            if std::env::var("REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: REQUIRE_GPU=1 but there is no GPU adapter ({why})");
            }
            eprintln!("skipped: no GPU adapter ({why}) [{test}]");
            false
        }
    }
}

/// Where a check of [`test_device!`] runs: a `--backend`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    /// The GPU, or `None` with a printed reason (see [`gpu_or_skip`]).
    pub fn gpu(test: &str) -> Option<Device> {
        gpu_or_skip(test).then_some(Device::Gpu)
    }

    /// The `--backend` value.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}
