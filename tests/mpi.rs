//! Several processes through MPI (`--features mpi`): `mpirun -np N
//! shadertrain train …` on loopback gives checkpoints byte-identical to one
//! process running the same N shards as micro-batches (`--micro-batches N`)
//! and to N threads (`--devices`), on the CPU backend and on lavapipe; ranks
//! that load different data are refused; a killed rank ends the job in
//! bounded time and the last checkpoint resumes, also with another P.
//!
//! Each test skips, saying why, when `mpirun` or the feature is missing;
//! with `REQUIRE_MPI=1` (CI) it fails instead.

mod cli_support;

use cli_support::{bin, gpu_or_skip, run, TempDir};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why MPI tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !cfg!(feature = "mpi") {
        return Some("built without --features mpi".into());
    }
    match Command::new("mpirun").arg("--version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("no mpirun on PATH (apt-get install openmpi-bin libopenmpi-dev)".into()),
    }
}

/// Whether `test` can run; otherwise prints why, or panics under `REQUIRE_MPI=1`.
fn mpi_or_skip(test: &str) -> bool {
    match missing() {
        None => true,
        Some(why) if std::env::var("REQUIRE_MPI").as_deref() == Ok("1") => {
            panic!("{test}: REQUIRE_MPI=1 but {why}")
        }
        Some(why) => {
            eprintln!("skipped {test}: {why} (set REQUIRE_MPI=1 to fail instead)");
            false
        }
    }
}

/// A test's directory and data file, or `None` (skipped) without MPI.
fn setup(test: &str) -> Option<(TempDir, String)> {
    if !mpi_or_skip(test) {
        return None;
    }
    let dir = TempDir::new(test);
    let data = csv(&dir);
    Some((dir, data))
}

/// `mpirun` for `np` ranks on this host (as root too; oversubscribed past
/// the cores; unbound, so lavapipe's threads are not pinned to one core).
fn mpirun(np: usize) -> Command {
    mpirun_through(np, &[])
}

/// [`mpirun`] starting each rank as `wrapper… shadertrain`.
fn mpirun_through(np: usize, wrapper: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .args(["-np", &np.to_string(), "-x", "XDG_RUNTIME_DIR"])
    .env("XDG_RUNTIME_DIR", std::env::temp_dir())
    // Loopback only: no probing of network interfaces.
    .env("OMPI_MCA_btl", "self,vader")
    .args(wrapper)
    .arg(bin());
    c
}

fn output(mut c: Command) -> Output {
    c.output().expect("mpirun runs")
}

fn dump(what: &str, o: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// 23 rows of 3 inputs and a target: batch 5 splits unevenly over 2 and 3.
fn csv(dir: &TempDir) -> String {
    let mut s = String::from("a,b,c,y\n");
    for i in 0..23 {
        let (a, b, c) = (
            (i % 5) as f64 / 4.0 - 0.5,
            (i % 7) as f64 / 6.0 - 0.5,
            (i % 3) as f64 - 1.0,
        );
        s.push_str(&format!(
            "{a:.4},{b:.4},{c:.1},{:.5}\n",
            0.5 + 0.3 * a - 0.2 * b * c
        ));
    }
    dir.file("d.csv", &s)
}

/// Whether process `pid` has a handler for SIGTERM (`SigCgt` in
/// /proc/PID/status, a hex mask whose bit 14 is signal 15).
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let mask = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&mask, 16).ok()
        })
        .is_some_and(|m| m & (1 << 14) != 0)
}

fn train_args(data: &str, backend: &str, opt: &str, save: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        "--data",
        data,
        "--layers",
        "3,6:tanh,1",
        "--epochs",
        &epochs.to_string(),
        "--batch",
        "5",
        "--lr",
        "0.05",
        "--seed",
        "3",
        "--threads",
        "1",
        "--quiet",
        "--backend",
        backend,
        "--optimizer",
        opt,
        "--save",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([save.to_string_lossy().into_owned()])
    .collect()
}

fn read(p: &Path, o: &Output) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{} ({e})\n{}", p.display(), dump("run", o)))
}

/// The network with dropout after tanh and relu: each rank keys its
/// shard's masks on the shard's rows in the whole batch.
const DROPOUT_LAYERS: &str = "3,6:tanh:dropout=0.3,4:relu:dropout=0.2,1";

/// For N = 2, 3: mpirun -np N, --micro-batches N and --devices ×N write the
/// same bytes; with `layers`, another network than [`train_args`]'.
fn ranks_equal_micro_batches(
    backend: &str,
    cases: &[(usize, &str)],
    layers: Option<&str>,
    test: &str,
) {
    let dir = TempDir::new(test);
    let data = csv(&dir);
    let args = |opt: &str, save: &Path| {
        let mut a = train_args(&data, backend, opt, save, 2);
        if let Some(l) = layers {
            let at = a.iter().position(|x| x == "--layers").unwrap() + 1;
            a[at] = l.to_string();
        }
        a
    };
    for &(np, opt) in cases {
        let label = format!("{backend} np {np} {opt} {}", layers.unwrap_or(""));
        let (m, s, t) = (
            dir.path("mpi.st"),
            dir.path("micro.st"),
            dir.path("threads.st"),
        );
        let mut c = mpirun(np);
        c.args(args(opt, &m));
        let o = output(c);
        assert!(o.status.success(), "{}", dump(&label, &o));
        let mut single = args(opt, &s);
        single.extend(["--micro-batches".into(), np.to_string()]);
        let r = run(&single);
        assert!(r.out.status.success(), "{label}: {}", r.dump());
        let mut threads = args(opt, &t);
        let one = if backend == "cpu" { "cpu" } else { "0" };
        threads.extend(["--devices".into(), vec![one; np].join(",")]);
        let r = run(&threads);
        assert!(r.out.status.success(), "{label}: {}", r.dump());
        let (a, b, c) = (read(&m, &o), read(&s, &o), read(&t, &o));
        assert!(a == b, "{label}: mpirun and --micro-batches differ");
        assert!(a == c, "{label}: mpirun and --devices differ");
        // Only rank 0 printed its results.
        let finals = String::from_utf8_lossy(&o.stdout)
            .matches("final loss")
            .count();
        assert_eq!(finals, 1, "{}", dump(&label, &o));
    }
}

#[test]
fn ranks_equal_micro_batches_cpu() {
    if mpi_or_skip("ranks_equal_micro_batches_cpu") {
        let cases = [(2, "sgd"), (2, "momentum"), (3, "adam"), (3, "sgd")];
        ranks_equal_micro_batches("cpu", &cases, None, "mpi-cpu");
        let dropout = [(2, "adam"), (3, "sgd")];
        ranks_equal_micro_batches("cpu", &dropout, Some(DROPOUT_LAYERS), "mpi-cpu-dropout");
    }
}

#[test]
fn ranks_equal_micro_batches_gpu() {
    if mpi_or_skip("ranks_equal_micro_batches_gpu") && gpu_or_skip("ranks_equal_micro_batches_gpu")
    {
        ranks_equal_micro_batches("gpu", &[(2, "momentum"), (3, "adam")], None, "mpi-gpu");
        let dropout = [(3, "adam")];
        ranks_equal_micro_batches("gpu", &dropout, Some(DROPOUT_LAYERS), "mpi-gpu-dropout");
    }
}

/// Ranks whose data differ are refused in one line per failing rank, not trained.
#[test]
fn ranks_with_other_data_are_refused() {
    let Some((dir, data)) = setup("ranks_with_other_data_are_refused") else {
        return;
    };
    // Each rank standardises its inputs only when its rank is odd: other data.
    let script = dir.file(
        "rank.sh",
        "#!/bin/sh\nif [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec \"$@\" --normalize; else exec \"$@\"; fi\n",
    );
    let mut c = mpirun_through(2, &["sh", &script]);
    c.args(train_args(&data, "cpu", "sgd", &dir.path("x.st"), 1));
    let o = output(c);
    assert!(!o.status.success(), "{}", dump("other data", &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("disagree about the training data"),
        "{}",
        dump("other data", &o)
    );
    assert!(!dir.path("x.st").exists(), "a checkpoint was written");
}

/// A rank killed mid-run ends the job within a bounded time; the last
/// checkpoint (written every epoch by rank 0) stays whole and resumes, on
/// one process with another P.
#[test]
fn killed_rank_ends_the_job_and_the_checkpoint_resumes() {
    let Some((dir, data)) = setup("killed_rank_ends_the_job_and_the_checkpoint_resumes") else {
        return;
    };
    let ckpt = dir.path("run.st");
    let mut c = mpirun(2);
    let mut args = train_args(&data, "cpu", "adam", &ckpt, 1_000_000);
    args.extend(["--save-every".into(), "1".into()]);
    c.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut job = c.spawn().expect("mpirun starts");
    let t0 = Instant::now();
    while !ckpt.exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ckpt.exists(), "no checkpoint after 60 s");
    let rank1 = rank_pid(job.id(), 1).expect("rank 1's process");
    let _ = Command::new("kill")
        .args(["-9", &rank1.to_string()])
        .status();
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = job.kill();
            panic!("the job still ran 30 s after rank 1 was killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !status.success(),
        "the job succeeded after a rank was killed"
    );
    eprintln!(
        "the job ended {:.2} s after rank 1 was killed",
        killed.elapsed().as_secs_f64()
    );
    // The checkpoint resumes on one process with 3 micro-batches (another P).
    resumes(&ckpt, &data, &["--micro-batches", "3"]);
    let _ = job.wait();
}

/// One more epoch from `ckpt` in one process, with `extra` flags, succeeds.
fn resumes(ckpt: &Path, data: &str, extra: &[&str]) {
    let done = shadertrain::Checkpoint::load(ckpt).unwrap().state.epoch;
    let epochs = (done + 1).to_string();
    let mut args = vec!["train", "--resume", ckpt.to_str().unwrap(), "--data", data];
    args.extend(["--backend", "cpu", "--epochs", &epochs, "--quiet"]);
    args.extend(extra);
    let r = run(&args);
    assert!(r.out.status.success(), "{}", r.dump());
}

/// The process under `parent` (mpirun) whose environment says it is `rank`.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        for e in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Field 4 (after the parenthesised name) is the parent's pid.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid != Some(parent) {
                continue;
            }
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                return Some(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// eval under mpirun prints the single process's loss (totals combined over ranks).
#[test]
fn eval_totals_combine_over_ranks() {
    let Some((dir, data)) = setup("eval_totals_combine_over_ranks") else {
        return;
    };
    let model = dir.path("m.st");
    let r = run(&train_args(&data, "cpu", "sgd", &model, 1));
    assert!(r.out.status.success(), "{}", r.dump());
    let eval = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        &data,
        "--backend",
        "cpu",
        "--json",
        "--batch",
        "7",
    ];
    let mut c = mpirun(3);
    c.args(eval);
    let o = output(c);
    assert!(o.status.success(), "{}", dump("eval", &o));
    let micro = run(&[&eval[..], &["--micro-batches", "3"]].concat());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        micro.stdout(),
        "{}",
        micro.dump()
    );
}

/// SIGTERM to one rank stops every rank after the same step (the ranks
/// agree on it in the step's status exchange): rank 0 writes that step's
/// checkpoint and says why it stopped, and it resumes.
#[test]
fn a_signal_to_one_rank_stops_all_at_one_step() {
    let Some((dir, data)) = setup("a_signal_to_one_rank_stops_all_at_one_step") else {
        return;
    };
    let ckpt = dir.path("run.st");
    let mut c = mpirun(2);
    c.args(train_args(&data, "cpu", "momentum", &ckpt, 1_000_000))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let job = c.spawn().expect("mpirun starts");
    let rank1 = rank_pid(job.id(), 1).expect("rank 1's process");
    // Signal only once rank 1 catches SIGTERM: on a busy machine its start
    // (MPI, data) can outlast any fixed sleep, and a SIGTERM before the
    // handler kills it outright. Then let it train a little.
    let t0 = Instant::now();
    while !catches_sigterm(rank1) && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-TERM", &rank1.to_string()])
        .status();
    let t0 = Instant::now();
    let o = job.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "{}",
        dump("signal", &o)
    );
    assert!(!o.status.success(), "{}", dump("signal", &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("interrupted by SIGTERM after"),
        "{}",
        dump("signal", &o)
    );
    assert!(
        err.contains("interrupted by a signal to another rank after"),
        "{}",
        dump("signal", &o)
    );
    // Both stopped after the same epoch count.
    let epochs: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split(" after ").nth(1)?.split(" of ").next())
        .collect();
    assert!(
        epochs.len() == 2 && epochs[0] == epochs[1],
        "{}",
        dump("signal", &o)
    );
    resumes(&ckpt, &data, &[]);
}

/// Every rank runs the kernel plan rank 0 resolved: with `--kernel-config`
/// the ranks write the bytes of `--micro-batches 2` running it, and the
/// checkpoint records it; with `--tune auto` only rank 0 tunes (one progress
/// line), and replaying its recorded choice on one process gives the ranks'
/// bytes.
#[test]
fn ranks_run_one_kernel_plan_gpu() {
    if !(mpi_or_skip("ranks_run_one_kernel_plan_gpu")
        && gpu_or_skip("ranks_run_one_kernel_plan_gpu"))
    {
        return;
    }
    use shadertrain::checkpoint::Checkpoint;
    let dir = TempDir::new("mpi-one-plan");
    let data = csv(&dir);
    let plan = "f0=gen:8x8:4x4:k8,d0=loops:8x8:4x4:k8,g0=gen:4x16:4x8:k16,f1=gen:16x8:8x4:k16,g1=gen:8x8:16x16:k8";
    let single = |save: &Path, plan: &str| {
        let mut a = train_args(&data, "gpu", "adam", save, 2);
        a.extend(["--kernel-config", plan, "--micro-batches", "2"].map(String::from));
        let r = run(&a);
        assert!(r.out.status.success(), "{}", r.dump());
    };
    let (m, s) = (dir.path("mpi.st"), dir.path("micro.st"));
    let mut c = mpirun(2);
    c.args(train_args(&data, "gpu", "adam", &m, 2))
        .args(["--kernel-config", plan]);
    let o = output(c);
    assert!(o.status.success(), "{}", dump("given plan", &o));
    single(&s, plan);
    assert!(
        read(&m, &o) == read(&s, &o),
        "mpirun and --micro-batches differ"
    );
    let recorded = Checkpoint::load(&m).unwrap().state.kernel_config;
    assert_eq!(recorded.as_deref(), Some(plan));
    // --tune auto on rank 0 only.
    let cache = dir.path("cache").to_string_lossy().into_owned();
    let env = [
        "env",
        "SHADERTRAIN_TUNE_BUDGET=0.001",
        &format!("SHADERTRAIN_CACHE_DIR={cache}"),
    ];
    let mut c = mpirun_through(2, &env);
    c.args(train_args(&data, "gpu", "adam", &m, 2))
        .args(["--tune", "auto"]);
    let o = output(c);
    assert!(o.status.success(), "{}", dump("tune auto", &o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.matches("tuning 5 of 5 products").count(),
        1,
        "{}",
        dump("tune auto", &o)
    );
    let tuned = Checkpoint::load(&m).unwrap().state.kernel_config.unwrap();
    single(&s, &tuned);
    assert!(
        read(&m, &o) == read(&s, &o),
        "the tuned plan replayed differs"
    );
}
