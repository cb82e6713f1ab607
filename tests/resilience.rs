//! Reliability, end to end: conflicting or out-of-range flags refused with no
//! output left behind, divergence stopped with its epoch (or step) and cause
//! while the last good checkpoint survives, a run killed with SIGKILL in the
//! middle of `--save-every` resumed without a corrupt file or a lost result,
//! and bitwise-identical results from run to run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shadertrain::checkpoint::Checkpoint;

mod cli_support;
use cli_support::*;

/// `--backend` values to run a case on: the CPU, and the GPU when there is one
/// (REQUIRE_GPU=1 makes a missing GPU fail instead).
fn backends(test: &str) -> Vec<&'static str> {
    let mut b = vec!["cpu"];
    if gpu_or_skip(test) {
        b.push("gpu");
    }
    b
}

/// A regression CSV `y = (3a − b) / scale` with inputs in `[0, scale)` and
/// targets in `(−1, 3)`: a linear net diverges on it at a high learning rate,
/// and converges at a low one once the inputs are standardised.
fn regression_csv(dir: &TempDir, name: &str, scale: f64) -> String {
    let mut s = String::from("a,b,y\n");
    for i in 0..200u32 {
        // A fixed low-discrepancy sequence: no RNG needed, same file every run.
        let a = (f64::from(i) * 0.618_033_988_7).fract() * scale;
        let b = (f64::from(i) * 0.414_213_562_3).fract() * scale;
        s += &format!("{a:.5},{b:.5},{:.5}\n", (3.0 * a - b) / scale);
    }
    dir.file(name, &s)
}

/// Assert the directory holds exactly `names`.
fn assert_only(dir: &TempDir, names: &[&str]) {
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(dir.listing(), want, "files left in {}", dir.0.display());
}

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

#[test]
fn bad_and_conflicting_flags_leave_no_output() {
    let dir = TempDir::new("bad-flags");
    let csv = regression_csv(&dir, "r.csv", 1.0);
    let outs = |d: &TempDir| {
        vec![
            "--save".to_string(),
            d.path("m.safetensors").display().to_string(),
            "--metrics".into(),
            d.path("m.json").display().to_string(),
            "--plot".into(),
            d.path("p.svg").display().to_string(),
        ]
    };
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        // Malformed values: clap's message names the flag.
        (vec!["--epochs", "ten"], vec!["--epochs", "ten"]),
        (vec!["--seed", "-1"], vec!["--seed", "-1"]),
        (vec!["--batch", "1e3"], vec!["--batch"]),
        (
            vec!["--epochs", "99999999999999999999999"],
            vec!["--epochs", "too large"],
        ),
        (vec!["--lr", "fast"], vec!["--lr", "fast"]),
        (vec!["--save-every", "-2"], vec!["--save-every"]),
        // A value holding a line break still gives one line.
        (
            vec!["--optimizer", "ad\nam"],
            vec!["--optimizer", "'ad\\nam'"],
        ),
        (
            vec!["--lr-schedule", "x\ny"],
            vec!["--lr-schedule", "'x\\ny'"],
        ),
        // Out of range.
        (vec!["--lr", "0"], vec!["--lr"]),
        (vec!["--lr", "1e39"], vec!["--lr", "inf"]),
        (vec!["--threads", "100000"], vec!["--threads", "1024"]),
        (vec!["--val-split", "1"], vec!["--val-split"]),
        (vec!["--optimizer", "adam", "--beta1", "1"], vec!["--beta1"]),
        // Conflicting: settings that this run would silently ignore.
        (
            vec!["--momentum", "0.5"],
            vec!["--momentum", "--optimizer momentum", "sgd"],
        ),
        (
            vec!["--optimizer", "momentum", "--beta2", "0.9"],
            vec!["--beta2", "--optimizer adam", "momentum"],
        ),
        (vec!["--eps", "1e-6"], vec!["--eps", "adam"]),
        (
            vec!["--lr-step", "3"],
            vec!["--lr-step", "--lr-schedule step", "constant"],
        ),
        (
            vec!["--lr-schedule", "cosine", "--lr-gamma", "0.5"],
            vec!["--lr-gamma", "cosine"],
        ),
        (vec!["--target", "y"], vec!["--target", "not a CSV"]),
        (
            vec!["--val-split", "0.1", "--val", "spirals"],
            vec!["--val-split", "--val"],
        ),
        // A CSV narrower than --layers: tests/bad_inputs.rs (csv-too-narrow).
        (
            vec!["--data", &csv, "--layers", "2,4,1", "--loss", "ce"],
            vec!["--loss ce", "softmax"],
        ),
    ];
    for (extra, words) in cases {
        let mut args: Vec<String> = ["train", "--quiet", "--backend", "cpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--epochs") {
            args.extend(["--epochs".into(), "1".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(outs(&dir));
        expect_error(&args, &words);
        assert_only(&dir, &["r.csv"]);
    }
}

#[test]
fn requests_beyond_memory_are_refused_before_allocating() {
    let dir = TempDir::new("memory");
    let save = dir.path("m.safetensors").display().to_string();
    // 1.5 TiB of batch: more than any machine has.
    let bench = [
        "bench",
        "--backend",
        "cpu",
        "--workload",
        "W0",
        "--steps",
        "1",
    ];
    let mut args = bench.to_vec();
    args.extend(["--batch", "100000000000"]);
    expect_error(
        &args,
        &["not enough memory", "batch of 100000000000", "--batch"],
    );
    // With the memory the run may use capped, a 400M-parameter net is refused
    // by the CPU backend before it allocates, and by bench's own check.
    let limit = [("SHADERTRAIN_MEMORY_LIMIT", "1000000000")];
    let train = [
        "train",
        "--backend",
        "cpu",
        "--epochs",
        "1",
        "--quiet",
        "--layers",
    ];
    let mut args = train.to_vec();
    args.extend(["2,20000,20000,2", "--save", &save]);
    let line = expect_error_env(&args, &limit, &["not enough memory", "2-20000-20000-2"]);
    // The limit less the data the run holds (the built-in spirals).
    assert!(
        line.contains("953.6 MiB is available")
            && line
                .contains("SHADERTRAIN_MEMORY_LIMIT's 953.7 MiB less the 31.2 KiB the data holds"),
        "{line}"
    );
    let mut args = bench[..3].to_vec();
    args.extend(["--layers", "2,20000,20000,2", "--steps", "1"]);
    expect_error_env(
        &args,
        &limit,
        &["not enough memory", "parameters", "--layers"],
    );
    let bad = [("SHADERTRAIN_MEMORY_LIMIT", "1GB")];
    expect_error_env(
        &args,
        &bad,
        &["SHADERTRAIN_MEMORY_LIMIT", "\"1GB\"", "bytes"],
    );
    assert_only(&dir, &[]);
    // On the GPU, parameters past the device's buffer limits name the limit.
    if gpu_or_skip("requests_beyond_memory_are_refused_before_allocating") {
        let mut args = train.to_vec();
        args[2] = "gpu";
        args.extend(["2,60000,60000,2", "--save", &save]);
        expect_error(&args, &["GPU", "max_buffer_size", "smaller"]);
        assert_only(&dir, &[]);
    }
}

#[test]
fn bench_refuses_gpu_settings_for_a_cpu_only_run() {
    let base = ["bench", "--backend", "cpu", "--workload", "W0"];
    for (extra, flag) in [
        (&["--kernels", "tiled"][..], "--kernels"),
        (&["--tiles", "discrete"], "--tiles"),
        (&["--profile"], "--profile"),
        (&["--adapter", "0"], "--adapter"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        expect_error(&args, &[flag, "applies only to the GPU", "--backend cpu"]);
    }
    // Out of range and malformed bench values name their flag too.
    for (extra, flag) in [
        (&["--steps", "0"][..], "--steps"),
        (&["--warmup", "-1"], "--warmup"),
        (&["--threads", "5000"], "--threads"),
        (&["--kernels", "fast"], "--kernels"),
    ] {
        let mut args = base.to_vec();
        args.extend(extra);
        expect_error(&args, &[flag]);
    }
}

// ---------------------------------------------------------------------------
// Divergence
// ---------------------------------------------------------------------------

fn linear_train<'a>(csv: &'a str, backend: &'a str, lr: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--data",
        csv,
        "--layers",
        "2,8:linear,1:linear",
        "--backend",
        backend,
        "--lr",
        lr,
        "--batch",
        "8",
        "--quiet",
    ]
}

#[test]
fn divergence_names_the_epoch_or_step_and_the_cause() {
    for backend in backends("divergence_names_the_epoch_or_step_and_the_cause") {
        let dir = TempDir::new(&format!("diverge-{backend}"));
        let csv = regression_csv(&dir, "r.csv", 1.0);
        let mut args = linear_train(&csv, backend, "5");
        args.extend(["--epochs", "5"]);
        let line = expect_error(&args, &["diverged", "in epoch 1", "(5)", "smaller --lr"]);
        assert!(!line.contains("normalize"), "{backend}: {line}");
        // --nan-check stops at the step: the same divergence, located.
        args.push("--nan-check");
        let line = expect_error(&args, &["diverged", "in epoch 1 (step ", " of 25)"]);
        assert!(line.contains("smaller --lr"), "{backend}: {line}");
        // Large unscaled inputs: the message also suggests --normalize.
        let big = regression_csv(&dir, "big.csv", 5e4);
        let mut args = linear_train(&big, backend, "0.01");
        args.extend(["--epochs", "3"]);
        let line = expect_error(&args, &["diverged", "--normalize", "e4 in magnitude"]);
        assert!(!line.contains("targets"), "{backend}: {line}");
        // ...which fixes it.
        let mut args = linear_train(&big, backend, "0.001");
        args.extend(["--epochs", "3", "--normalize"]);
        run(&args).success();
    }
}

#[test]
fn divergence_keeps_the_last_good_checkpoint() {
    for backend in backends("divergence_keeps_the_last_good_checkpoint") {
        let dir = TempDir::new(&format!("diverge-ckpt-{backend}"));
        let csv = regression_csv(&dir, "r.csv", 1.0);
        let ck = dir.path("m.safetensors").display().to_string();
        let mut good = linear_train(&csv, backend, "0.01");
        good.extend(["--epochs", "2", "--save", &ck, "--save-every", "1"]);
        run(&good).success();
        let before = std::fs::read(&ck).expect("checkpoint written");
        // The same run resumed at a rate that blows up in its first new epoch.
        let metrics = dir.path("m.json").display().to_string();
        let plot = dir.path("p.png").display().to_string();
        let mut bad = linear_train(&csv, backend, "5");
        bad.extend(["--epochs", "6", "--resume", &ck, "--save", &ck]);
        bad.extend(["--save-every", "1", "--metrics", &metrics, "--plot", &plot]);
        for check in [false, true] {
            let mut args = bad.clone();
            if check {
                args.push("--nan-check");
            }
            expect_error(&args, &["diverged", "in epoch 3"]);
            let after = std::fs::read(&ck).expect("checkpoint kept");
            assert!(
                before == after,
                "{backend}: the good checkpoint was replaced"
            );
            assert_eq!(Checkpoint::load(Path::new(&ck)).unwrap().state.epoch, 2);
            assert_only(&dir, &["m.safetensors", "r.csv"]);
        }
    }
}

// ---------------------------------------------------------------------------
// SIGKILL in the middle of a run
// ---------------------------------------------------------------------------

/// Start `train` in the background, its output discarded.
fn spawn(args: &[String]) -> Child {
    Command::new(bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shadertrain")
}

/// The epoch of the checkpoint at `path`, or `None` while there is none. A
/// file that exists must always load: a torn write would fail here.
fn saved_epoch(path: &Path) -> Option<usize> {
    if !path.exists() {
        return None;
    }
    match Checkpoint::load(path) {
        Ok(c) => Some(c.state.epoch),
        Err(e) => panic!("a corrupt checkpoint was observed: {e}"),
    }
}

/// Kill the run with SIGKILL once its checkpoint reaches `epoch`; the epoch
/// the checkpoint then holds.
fn kill_at(mut child: Child, path: &Path, epoch: usize, backend: &str) -> usize {
    use std::os::unix::process::ExitStatusExt;
    let t0 = Instant::now();
    while saved_epoch(path).is_none_or(|e| e < epoch) {
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("{backend}: the run ended ({status}) before epoch {epoch} was saved");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{backend}: epoch {epoch} was never saved"
        );
        std::thread::sleep(Duration::from_micros(300));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap child");
    assert_eq!(status.signal(), Some(9), "{backend}: not killed: {status}");
    saved_epoch(path).expect("the checkpoint survives the kill")
}

#[test]
fn sigkill_mid_run_then_resume_matches_a_straight_run() {
    for backend in backends("sigkill_mid_run_then_resume_matches_a_straight_run") {
        let dir = TempDir::new(&format!("sigkill-{backend}"));
        // Short epochs, so that kills land anywhere in the save cycle. On the
        // CPU a save is most of an epoch, and the test goes on until a kill
        // has landed mid-write (a killed writer's temporary file is there).
        let (epochs, min_kills, max_kills) = match backend {
            "cpu" => (1000, 3, 60),
            _ => (24, 3, 3),
        };
        let ck = dir.path("run.safetensors");
        let base: Vec<String> = [
            "train",
            "--data",
            "spirals",
            "--layers",
            "2,16,2",
            "--batch",
            "64",
            "--optimizer",
            "momentum",
            "--epochs",
            &epochs.to_string(),
            "--backend",
            backend,
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let with = |extra: &[&str]| {
            let mut a = base.clone();
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let ck_s = ck.display().to_string();
        let save = ["--save", ck_s.as_str(), "--save-every", "1"];
        let resume = ["--resume", ck_s.as_str()];
        let (mut last, mut kills, mut mid_write) = (0, 0, 0);
        while kills < min_kills || (backend == "cpu" && mid_write == 0 && kills < max_kills) {
            let mut extra = save.to_vec();
            if kills > 0 {
                extra.extend(resume);
            }
            // Each run saves at least two epochs of its own before its kill.
            let want = last + 2;
            let got = kill_at(spawn(&with(&extra)), &ck, want, backend);
            // At most the epoch in progress is lost; none saved is undone.
            assert!(
                got >= want && got >= last,
                "{backend}: epoch {got} after {last}"
            );
            last = got;
            kills += 1;
            mid_write += usize::from(dir.listing().iter().any(|f| f.contains(".tmp.")));
        }
        assert!(
            backend != "cpu" || mid_write > 0,
            "no kill of {kills} landed while a checkpoint was being written"
        );
        eprintln!("{backend}: {kills} kills, {mid_write} mid-write, last saved epoch {last}");
        // Finish from the last checkpoint; it equals an uninterrupted run.
        let mut extra = vec!["--save", ck_s.as_str()];
        extra.extend(resume);
        run(&with(&extra)).success();
        let straight = dir.path("straight.safetensors").display().to_string();
        run(&with(&["--save", &straight])).success();
        let (a, b) = (
            Checkpoint::load(&ck).unwrap(),
            Checkpoint::load(Path::new(&straight)).unwrap(),
        );
        assert_eq!(a.state.epoch, epochs);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert!(
            bits(&a.params.data) == bits(&b.params.data),
            "{backend}: resumed parameters differ from the straight run's"
        );
        assert!(bits(&a.optimizer_state.moments) == bits(&b.optimizer_state.moments));
        let losses = |c: &Checkpoint| c.state.history.iter().map(|h| h.loss).collect::<Vec<_>>();
        assert_eq!(losses(&a), losses(&b), "{backend}: per-epoch losses");
        // No temporary file of a killed writer is left behind.
        assert_only(&dir, &["run.safetensors", "straight.safetensors"]);
    }
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

/// The same seed, data, flags and backend give bitwise-identical parameters
/// and byte-identical checkpoint files.
#[test]
fn same_seed_gives_bitwise_identical_parameters() {
    for backend in backends("same_seed_gives_bitwise_identical_parameters") {
        let dir = TempDir::new(&format!("determinism-{backend}"));
        let (mut params, mut files) = (Vec::new(), Vec::new());
        let runs: &[&[&str]] = match backend {
            // Thread counts change the CPU's split of the work, not its order.
            "cpu" => &[
                &["--threads", "1"],
                &["--threads", "2"],
                &["--threads", "2"],
            ],
            _ => &[&[], &[]],
        };
        for (i, extra) in runs.iter().enumerate() {
            let out = dir.path(&format!("{i}.safetensors")).display().to_string();
            let mut args = vec![
                "train",
                "--data",
                "spirals",
                "--layers",
                "2,24:tanh,16:relu,2:softmax",
                "--optimizer",
                "adam",
                "--lr",
                "0.01",
                "--epochs",
                "4",
                "--batch",
                "50",
                "--backend",
                backend,
                "--quiet",
                "--save",
                &out,
            ];
            args.extend(extra.iter().copied());
            run(&args).success();
            files.push(std::fs::read(&out).unwrap());
            let c = Checkpoint::load(Path::new(&out)).unwrap();
            params.push(
                c.params
                    .data
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>(),
            );
        }
        for (i, p) in params.iter().enumerate().skip(1) {
            let diff = p.iter().zip(&params[0]).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "{backend}: run {i} differs in {diff} parameters");
            // The whole file: sorted metadata, no wall-clock values.
            assert!(
                files[i] == files[0],
                "{backend}: run {i}'s checkpoint differs from run 0's bytes"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Bounded reads of data
// ---------------------------------------------------------------------------

#[test]
fn endless_or_binary_data_fails_fast_with_one_line() {
    let t0 = Instant::now();
    expect_error(
        &[
            "train",
            "--data",
            "/dev/zero",
            "--layers",
            "2,4,1",
            "--backend",
            "cpu",
        ],
        &["/dev/zero", "NUL byte", "not a text CSV file"],
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    // An endless stream of valid rows stops at the memory bound.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "yes 1,1,1 | SHADERTRAIN_MEMORY_LIMIT=1000000 \"$0\" train --data /dev/stdin --layers 2,4,1 --backend cpu",
        ])
        .arg(bin())
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "an endless pipe was read without bound"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/dev/stdin") && err.contains("would not fit"),
        "{err}"
    );
}

#[test]
fn memory_limit_counts_the_dataset() {
    let dir = TempDir::new("memlimit-data");
    let csv = dir.file("d.csv", "a,b,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n");
    expect_error_env(
        &[
            "train",
            "--data",
            &csv,
            "--layers",
            "2,4,1",
            "--backend",
            "cpu",
        ],
        &[("SHADERTRAIN_MEMORY_LIMIT", "40")],
        &["not enough memory", "d.csv", "would not fit"],
    );
}

#[test]
fn every_command_reads_data_from_a_pipe() {
    let dir = TempDir::new("stdin-data");
    let ck = dir.path("m.safetensors").to_string_lossy().into_owned();
    let csv = b"a,b,y\n0,0,0\n0,1,1\n1,0,1\n1,1,0\n";
    let train = run_stdin(
        &[
            "train",
            "--data",
            "/dev/stdin",
            "--layers",
            "2,4,1",
            "--epochs",
            "3",
            "--backend",
            "cpu",
            "--save",
            &ck,
            "--quiet",
        ],
        csv,
        &[],
    );
    assert!(train.status.success(), "{train:?}");
    let on_stdin = |cmd| {
        [
            cmd,
            "--model",
            &ck,
            "--data",
            "/dev/stdin",
            "--backend",
            "cpu",
        ]
    };
    let eval = run_stdin(&on_stdin("eval"), csv, &[]);
    assert!(eval.status.success(), "{eval:?}");
    assert!(String::from_utf8_lossy(&eval.stdout).contains("4 samples"));
    // predict, with targets and with inputs alone: the header decides, read once.
    for input in [&csv[..], b"a,b\n0,0\n0,1\n1,0\n1,1\n"] {
        let p = run_stdin(&on_stdin("predict"), input, &[]);
        assert!(p.status.success(), "{p:?}");
        assert_eq!(
            String::from_utf8_lossy(&p.stdout).lines().count(),
            5,
            "{p:?}"
        );
    }
}

/// A model file that never ends (`/dev/zero`), or declares more than it
/// holds, fails fast in one line instead of being read into memory.
#[cfg(unix)]
#[test]
fn endless_or_lying_model_files_fail_fast() {
    let dir = TempDir::new("endless-model");
    let mut lying = (1u64 << 40).to_le_bytes().to_vec();
    lying.extend_from_slice(b"{}      ");
    let lying_path = dir.path("lying.safetensors");
    std::fs::write(&lying_path, lying).unwrap();
    let lying_s = lying_path.display().to_string();
    for model in ["/dev/zero", lying_s.as_str()] {
        for cmd in ["eval", "predict"] {
            let t = Instant::now();
            let args = [cmd, "--model", model, "--data", "xor"];
            expect_error(&args, &[model, "not a safetensors checkpoint"]);
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{cmd} {model} took {:?}",
                t.elapsed()
            );
        }
        let t = Instant::now();
        expect_error(
            &["train", "--resume", model, "--epochs", "2", "--data", "xor"],
            &[model, "not a safetensors checkpoint"],
        );
        assert!(t.elapsed() < Duration::from_secs(20));
    }
}

/// A checkpoint declaring more than the memory available is not read.
#[test]
fn a_model_larger_than_memory_is_not_read() {
    let dir = TempDir::new("model-past-memory");
    let model = dir.path("m.safetensors").display().to_string();
    let train = "train --backend cpu --quiet --data xor --epochs 1 --save";
    let args: Vec<&str> = train.split(' ').chain([model.as_str()]).collect();
    run(&args).success();
    expect_error_env(
        &[
            "eval",
            "--backend",
            "cpu",
            "--model",
            &model,
            "--data",
            "xor",
        ],
        &[("SHADERTRAIN_MEMORY_LIMIT", "100")],
        &[&model, "more than the 100 B of memory available"],
    );
}

/// Values are reported as the user gave them: a float flag that rounds to 0
/// or overflows as a 32-bit float is refused naming the value written, not
/// the rounded one (issue 15's `--lr 1e-50` is not "got 0").
#[test]
fn float_flags_are_reported_as_given() {
    for (flag, value, says) in [
        ("--lr", "1e-50", "rounds to 0"),
        ("--momentum", "1e-46", "rounds to 0"),
        ("--weight-decay", "1e40", "inf"),
        ("--lr-gamma", "-1e39", "inf"),
    ] {
        expect_error(
            &["train", "--quiet", "--backend", "cpu", flag, value],
            &[flag, value, says],
        );
    }
    expect_error(
        &["bench", "--backend", "cpu", "--lr", "1e-50"],
        &["--lr", "1e-50", "rounds to 0"],
    );
}

/// A divergence whose weight decay alone grows the weights (lr · λ > 2)
/// blames the weight decay too, by its flag; a sane decay is not blamed.
#[test]
fn divergence_blames_a_huge_weight_decay() {
    let base = [
        "train",
        "--data",
        "xor",
        "--backend",
        "cpu",
        "--quiet",
        "--epochs",
        "300",
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let line = expect_error(
        &args(&["--lr", "1", "--weight-decay", "3"]),
        &["diverged", "weight decay (3)", "--weight-decay"],
    );
    assert!(line.contains("smaller --lr"), "{line}");
    let line = expect_error(
        &args(&[
            "--layers",
            "2,4:linear,1:linear",
            "--lr",
            "50",
            "--weight-decay",
            "0.01",
        ]),
        &["diverged", "smaller --lr"],
    );
    assert!(!line.contains("weight decay"), "{line}");
}
