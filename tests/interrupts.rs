//! Signals, closed pipes and extreme counts: the first SIGINT or SIGTERM ends
//! `train` after its current step with every output written (exit 130 or
//! 143), a second exits at once; a closed stdout ends any command quietly
//! after its files are written; no count given on the command line panics
//! or allocates in proportion to itself.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shadertrain::checkpoint::Checkpoint;
use shadertrain::train::Progress;
use shadertrain::trainer::Device as Dev;
use shadertrain::{Dataset, Network, Trainer};

mod cli_support;
use cli_support::*;

fn backends(test: &str) -> Vec<&'static str> {
    let mut b = vec!["cpu"];
    if gpu_or_skip(test) {
        b.push("gpu");
    }
    b
}

fn spawn(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shadertrain")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} failed");
}

/// A spirals run on `backend` far longer than any test waits, with `extra` flags.
fn long_run(backend: &str, extra: &[&str]) -> Child {
    let mut args = vec![
        "train",
        "--data",
        "spirals",
        "--epochs",
        "100000",
        "--backend",
        backend,
        "--quiet",
    ];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Waits until `path` holds an epoch record (the run has finished an epoch).
fn wait_for_epoch(child: &mut Child, path: &Path) {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains("\"kind\":\"epoch\"") {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the run ended before its first epoch: {status}\n{err}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no epoch after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(mut child: Child, limit: Duration) -> (ExitStatus, String) {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            return (status, err);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            panic!("still running {limit:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn no_temporaries(dir: &TempDir) {
    let left: Vec<String> = dir
        .listing()
        .into_iter()
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn first_signal_saves_everything_and_exits_with_its_status() {
    for backend in backends("first_signal_saves_everything_and_exits_with_its_status") {
        for (sig, code, name) in [("-INT", 130, "SIGINT"), ("-TERM", 143, "SIGTERM")] {
            let dir = TempDir::new(&format!("sig-{backend}{sig}"));
            let (ck, m, p, j) = (
                dir.path("ck.safetensors"),
                dir.path("m.json"),
                dir.path("p.svg"),
                dir.path("j.jsonl"),
            );
            let s = |p: &Path| p.to_string_lossy().into_owned();
            let (ck_s, m_s, p_s, j_s) = (s(&ck), s(&m), s(&p), s(&j));
            let mut child = long_run(
                backend,
                &[
                    "--save",
                    &ck_s,
                    "--metrics",
                    &m_s,
                    "--plot",
                    &p_s,
                    "--metrics-jsonl",
                    &j_s,
                ],
            );
            wait_for_epoch(&mut child, &j);
            signal(&child, sig);
            let (status, err) = finish(child, Duration::from_secs(60));
            assert_eq!(
                status.code(),
                Some(code),
                "{backend} {name}: {status}\n{err}"
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(
                err.contains(&format!("interrupted by {name}")) && err.contains("ck.safetensors"),
                "{backend} {name}: {err}"
            );
            let c = Checkpoint::load(&ck).expect("the checkpoint loads");
            assert!(c.state.epoch >= 1 && c.state.epoch < 100000);
            assert_eq!(c.state.history.len(), c.state.epoch);
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&m).unwrap()).unwrap();
            assert_eq!(json["interrupted"], name);
            assert_eq!(json["epochs"].as_array().unwrap().len(), c.state.epoch);
            assert!(std::fs::read_to_string(&p).unwrap().contains("<svg"));
            no_temporaries(&dir);
            // It resumes.
            let ck_s2 = ck_s.clone();
            let e = (c.state.epoch + 1).to_string();
            run(&[
                "train",
                "--data",
                "spirals",
                "--backend",
                backend,
                "--quiet",
                "--resume",
                &ck_s2,
                "--epochs",
                &e,
            ])
            .success();
        }
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    for backend in backends("a_second_signal_exits_at_once") {
        let dir = TempDir::new(&format!("sig2-{backend}"));
        let (ck, j) = (dir.path("ck.safetensors"), dir.path("j.jsonl"));
        let (ck_s, j_s) = (
            ck.to_string_lossy().into_owned(),
            j.to_string_lossy().into_owned(),
        );
        let p_s = dir.path("p.png").to_string_lossy().into_owned();
        // A wide network: the evaluation, checkpoint and plot after the
        // first signal take far longer than the second signal takes to come.
        let mut child = long_run(
            backend,
            &[
                "--layers",
                "2,512,512,2",
                "--save",
                &ck_s,
                "--save-every",
                "1",
                "--plot",
                &p_s,
                "--metrics-jsonl",
                &j_s,
                "--log-every",
                "1",
            ],
        );
        wait_for_epoch(&mut child, &j);
        while !ck.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Both from one shell, microseconds apart (its built-in kill).
        let pid = child.id().to_string();
        let ok = Command::new("sh")
            .args(["-c", "kill -INT $0; kill -TERM $0", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let (status, err) = finish(child, Duration::from_secs(10));
        // Signals that arrive together have no order: either names the status.
        assert!(
            matches!(status.code(), Some(130 | 143)),
            "{backend}: {status}\n{err}"
        );
        assert!(
            !err.contains("interrupted by"),
            "{backend}: the second signal did not exit at once: {err}"
        );
        no_temporaries(&dir);
        Checkpoint::load(&ck).expect("the last checkpoint survives");
    }
}

/// A run stopped mid-epoch saves the parameters after its last step; resumed,
/// it skips the steps already taken and ends as a straight run does.
#[test]
fn stopped_mid_epoch_then_resumed_matches_a_straight_run() {
    let mut devices = vec![Dev::Cpu { threads: 1 }];
    if gpu_or_skip("stopped_mid_epoch_then_resumed_matches_a_straight_run") {
        devices.push(Dev::Gpu { adapter: None });
    }
    let data = Dataset::spirals(50, 3);
    let net = Network::parse("2,8,2").unwrap();
    for dev in devices {
        let dir = TempDir::new(&format!("mid-{dev:?}").replace([' ', '{', '}', ':'], ""));
        let make = || {
            Trainer::on(&dev, &net, 16)
                .unwrap()
                .optimizer(shadertrain::Optimizer::default())
                .unwrap()
                .epochs(4)
                .batch(16)
                .lr(0.5)
                .seed(9)
        };
        let mut straight = make();
        straight.fit(&data).unwrap();
        let want = straight.backend().params().unwrap();

        let ck = dir.path("ck.safetensors");
        let stop = Arc::new(AtomicBool::new(false));
        let mut t = make()
            .stop_when(stop.clone())
            .checkpoints(&ck, None)
            .unwrap();
        t.fit_observed(&data, None, |_, p| {
            if let Progress::Step {
                epoch: 2, step: 3, ..
            } = p
            {
                stop.store(true, Ordering::SeqCst);
            }
            Ok(())
        })
        .unwrap();
        assert!(t.stopped());
        let c = Checkpoint::load(&ck).unwrap();
        assert_eq!(c.state.epoch, 1, "{dev:?}: the completed epochs");
        // 7 steps per epoch: one epoch and three steps.
        assert_eq!(c.optimizer_state.t, 10, "{dev:?}");

        let mut resumed = make().resume(&c).unwrap().epochs(4);
        resumed.fit(&data).unwrap();
        let got = resumed.backend().params().unwrap();
        assert_eq!(
            got.data, want.data,
            "{dev:?}: not a straight run's parameters"
        );
        assert_eq!(resumed.history().len(), 4);

        // Continuing the stopped trainer itself gets there too.
        stop.store(false, Ordering::SeqCst);
        t.fit(&data).unwrap();
        assert_eq!(t.backend().params().unwrap().data, want.data, "{dev:?}");
    }
}

// ---------------------------------------------------------------------------
// A closed stdout
// ---------------------------------------------------------------------------

/// Runs `args` with stdout a pipe nobody reads (closed before the start).
fn with_closed_stdout(args: &[&str]) -> (ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    let dir = TempDir::new("closed-stdout");
    let s = |n: &str| dir.path(n).to_string_lossy().into_owned();
    let (ck, m, p, csv) = (s("ck.safetensors"), s("m.json"), s("p.svg"), s("out.csv"));
    let train = [
        "train",
        "--data",
        "xor",
        "--epochs",
        "50",
        "--backend",
        "cpu",
        "--save",
        &ck,
        "--metrics",
        &m,
        "--plot",
        &p,
    ];
    let (status, err) = with_closed_stdout(&train);
    assert_eq!(status.code(), Some(0), "train: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    for f in [&ck, &m, &p] {
        assert!(Path::new(f).exists(), "{f} not written");
    }
    let _ = csv;
    for args in [
        vec!["eval", "--model", &ck, "--data", "xor", "--backend", "cpu"],
        vec![
            "predict",
            "--model",
            &ck,
            "--data",
            "xor",
            "--backend",
            "cpu",
        ],
        vec!["devices"],
        vec!["devices", "--json"],
        vec!["example"],
        vec![
            "bench",
            "--backend",
            "cpu",
            "--layers",
            "2,4,1",
            "--batch",
            "4",
            "--steps",
            "2",
        ],
    ] {
        let (status, err) = with_closed_stdout(&args);
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------
// Extreme counts
// ---------------------------------------------------------------------------

const VALUES: [&str; 12] = [
    "0",
    "1",
    "2",
    "2147483648",
    "4294967296",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "abc",
    "1e3",
    "",
];

/// Runs `args` for at most `secs`: a run that ends must succeed or fail with
/// one `error:` line (status 1 or 2); one still running (a huge count that
/// trains) is killed; none may panic or abort.
fn no_panic(args: &[String], secs: f64) {
    let mut child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed().as_secs_f64() > secs {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !err.contains("panicked") && !err.contains("memory allocation"),
        "{args:?}: {err}"
    );
    if let Some(s) = status {
        let code = s.code();
        assert!(matches!(code, Some(0..=2)), "{args:?}: {s}\n{err}");
        if code != Some(0) {
            let lines: Vec<&str> = err.lines().filter(|l| !is_driver_noise(l)).collect();
            assert_eq!(lines.len(), 1, "{args:?}: {err}");
            assert!(lines[0].starts_with("error:"), "{args:?}: {err}");
        }
    }
}

#[test]
fn no_count_on_the_command_line_panics() {
    let dir = TempDir::new("counts");
    let ck = dir.path("ck.safetensors").to_string_lossy().into_owned();
    let j = dir.path("j.jsonl").to_string_lossy().into_owned();
    run(&[
        "train",
        "--data",
        "xor",
        "--epochs",
        "1",
        "--backend",
        "cpu",
        "--quiet",
        "--save",
        &ck,
    ])
    .success();
    let base = ["train", "--backend", "cpu", "--quiet"];
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for v in VALUES {
        for (flag, extra) in [
            ("--epochs", vec!["--data", "xor"]),
            ("--epochs", vec!["--data", "spirals"]),
            ("--epochs", vec!["--data", "xor", "--resume", &ck]),
            ("--batch", vec!["--data", "xor", "--epochs", "3"]),
            ("--threads", vec!["--data", "xor", "--epochs", "3"]),
            ("--seed", vec!["--data", "xor", "--epochs", "3"]),
            (
                "--save-every",
                vec!["--data", "xor", "--epochs", "3", "--save", &ck],
            ),
            (
                "--log-every",
                vec!["--data", "xor", "--epochs", "3", "--metrics-jsonl", &j],
            ),
        ] {
            let mut args = s(&base);
            args.extend(s(&extra));
            args.extend(s(&[flag, v]));
            no_panic(&args, 1.0);
        }
        for flag in ["--steps", "--batch", "--warmup", "--threads", "--seed"] {
            let mut args = s(&["bench", "--backend", "cpu", "--layers", "2,4,1"]);
            if flag != "--steps" {
                args.extend(s(&["--steps", "2"]));
            }
            if flag != "--batch" {
                args.extend(s(&["--batch", "4"]));
            }
            args.extend(s(&[flag, v]));
            no_panic(&args, 1.0);
        }
    }
}
