//! Outputs that are safe to point anywhere (README, Reliability): every
//! output checked before any work, written through symbolic links, keeping
//! an existing file's mode, never onto another output or an input, and
//! temporary files that only their writer's death frees for cleanup.

#![cfg(unix)]

mod cli_support;

use cli_support::{expect_error, run, TempDir};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A short CPU run on XOR, then `extra`.
fn train(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train", "--backend", "cpu", "--data", "xor", "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// `args` fails with one error line holding `words`, before training: no
/// "final loss" and quick although it asks for a long run.
fn refused_before_training(args: &[String], words: &[&str]) {
    let t0 = Instant::now();
    let r = run(args);
    assert!(!r.stdout().contains("loss"), "it trained\n{}", r.dump());
    expect_error(args, words);
    assert!(t0.elapsed() < Duration::from_secs(60), "slow refusal");
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn save_to_dev_null_is_refused_and_dev_null_stays() {
    // First a device node of our own (as root), so that a binary that would
    // replace a device does it there, not to the machine's /dev/null.
    let tmp = TempDir::new("out-dev-null");
    let node = tmp.path("null");
    let made = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    if made {
        let args = train(&["--epochs", "100000", "--save", &s(&node)]);
        refused_before_training(&args, &["--save", "not a regular file"]);
        let m = std::fs::symlink_metadata(&node).unwrap();
        assert!(
            m.file_type().is_char_device(),
            "the device node was replaced"
        );
    }
    let args = train(&["--epochs", "100000", "--save", "/dev/null"]);
    refused_before_training(&args, &["--save", "/dev/null", "not a regular file"]);
    let m = std::fs::symlink_metadata("/dev/null").unwrap();
    assert!(m.file_type().is_char_device(), "/dev/null was replaced");
}

#[test]
fn a_fifo_is_refused() {
    let tmp = TempDir::new("out-fifo");
    let fifo = tmp.path("pipe.json");
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo failed");
        return;
    }
    let args = train(&["--epochs", "100000", "--metrics", &s(&fifo)]);
    refused_before_training(&args, &["--metrics", "not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn metrics_through_a_symlink_write_the_target_and_keep_the_link() {
    let tmp = TempDir::new("out-symlink");
    std::fs::create_dir_all(tmp.path("a")).unwrap();
    std::fs::create_dir_all(tmp.path("b")).unwrap();
    let real = tmp.path("b/real.json");
    std::fs::write(&real, "old").unwrap();
    let link = tmp.path("a/link.json");
    std::os::unix::fs::symlink("../b/real.json", &link).unwrap();
    let r = run(&train(&["--epochs", "2", "--metrics", &s(&link)])).success();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{}",
        r.dump()
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap();
    assert!(json["epochs"].is_array());
    // The temporary file went beside the target, and is gone.
    let names = |d: &str| -> Vec<String> {
        std::fs::read_dir(tmp.path(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names("a"), vec!["link.json"]);
    assert_eq!(names("b"), vec!["real.json"]);
}

#[test]
fn a_0600_checkpoint_stays_0600_after_a_resave() {
    let tmp = TempDir::new("out-mode");
    let ck = s(&tmp.path("c.safetensors"));
    run(&train(&["--epochs", "1", "--save", &ck])).success();
    std::fs::set_permissions(&ck, std::fs::Permissions::from_mode(0o600)).unwrap();
    run(&train(&["--epochs", "2", "--save", &ck])).success();
    let mode = std::fs::metadata(&ck).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    assert_eq!(tmp.listing(), vec!["c.safetensors"]);
}

#[test]
fn unwritable_outputs_are_refused_before_training() {
    let tmp = TempDir::new("out-unwritable");
    let dir = s(&tmp.0);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--save", &dir], vec!["--save", "is a directory"]),
        // Unwritable even by root (a chmod 0555 directory is not).
        (
            vec!["--save", "/sys/shadertrain.safetensors"],
            vec!["--save", "/sys/shadertrain.safetensors"],
        ),
        (
            vec!["--metrics", "/proc/shadertrain.json"],
            vec!["--metrics", "/proc/shadertrain.json"],
        ),
        (
            vec!["--plot", "/proc/self/shadertrain.png"],
            vec!["--plot", "/proc/self/shadertrain.png"],
        ),
        (
            vec!["--metrics-jsonl", "/sys/shadertrain.jsonl"],
            vec!["--metrics-jsonl", "/sys/shadertrain.jsonl"],
        ),
        // A pipe here: the test reads the binary's standard output.
        (
            vec!["--metrics", "/dev/stdout"],
            vec!["--metrics", "/dev/stdout", "not a regular file"],
        ),
        (
            vec!["--save", "/nowhere/c.safetensors"],
            vec!["--save", "does not exist"],
        ),
    ];
    for (flags, words) in cases {
        let mut args = train(&["--epochs", "100000"]);
        args.extend(flags.iter().map(|f| f.to_string()));
        refused_before_training(&args, &words);
    }
    assert!(tmp.listing().is_empty(), "{:?}", tmp.listing());
}

/// A read-only mount (a bind mount remounted read-only in a private mount
/// namespace, so the machine's mounts stay as they are): refused before
/// training. Skipped, saying why, where `unshare -m` or `mount` is refused.
#[test]
fn a_read_only_mount_is_refused_before_training() {
    let tmp = TempDir::new("out-read-only");
    let dir = s(&tmp.0);
    let ck = format!("{dir}/c.safetensors");
    let script = r#"d="$1"; shift
mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" || exit 77
exec "$@""#;
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script, "sh", &dir])
        .arg(cli_support::bin())
        .args(train(&["--epochs", "100000", "--save", &ck]))
        .output();
    let out = match out {
        Ok(o) if o.status.code() != Some(77) && !o.stderr.starts_with(b"unshare:") => o,
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr);
            eprintln!("skipped: no read-only bind mount here: {}", why.trim());
            return;
        }
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!out.status.success());
    assert_eq!(lines.len(), 1, "{err}");
    for w in ["error:", "--save", "Read-only file system"] {
        assert!(lines[0].contains(w), "{err}");
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("loss"));
    assert!(tmp.listing().is_empty());
}

#[test]
fn a_252_character_name_works() {
    let tmp = TempDir::new("out-long-name");
    let ck = tmp.path(&format!("{}.safetensors", "c".repeat(240)));
    let metrics = tmp.path(&format!("{}.json", "m".repeat(247)));
    assert_eq!(ck.file_name().unwrap().len(), 252);
    assert_eq!(metrics.file_name().unwrap().len(), 252);
    run(&train(&[
        "--epochs",
        "1",
        "--save",
        &s(&ck),
        "--metrics",
        &s(&metrics),
    ]))
    .success();
    assert_eq!(tmp.listing().len(), 2, "{:?}", tmp.listing());
    // And a name past the limit is one error line, not a failure after training.
    let too_long = tmp.path(&"x".repeat(256));
    refused_before_training(
        &train(&["--epochs", "100000", "--save", &s(&too_long)]),
        &["--save", "too long"],
    );
}

#[test]
fn two_outputs_on_one_file_are_refused() {
    let tmp = TempDir::new("out-same");
    let x = s(&tmp.path("x"));
    let dotted = format!("{}/./x", tmp.0.display());
    refused_before_training(
        &train(&["--epochs", "100000", "--save", &x, "--metrics", &dotted]),
        &["--save", "--metrics", "both name"],
    );
    assert!(tmp.listing().is_empty());
}

#[test]
fn outputs_on_inputs_are_refused_but_save_over_resume_works() {
    let tmp = TempDir::new("out-inputs");
    let ck = s(&tmp.path("c.safetensors"));
    run(&train(&["--epochs", "1", "--save", &ck])).success();
    let before = std::fs::read(&ck).unwrap();
    refused_before_training(
        &train(&["--epochs", "100000", "--resume", &ck, "--metrics", &ck]),
        &["--metrics", "--resume"],
    );
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    // A link to the checkpoint is the checkpoint.
    let link = s(&tmp.path("link.json"));
    std::os::unix::fs::symlink(&ck, &link).unwrap();
    refused_before_training(
        &train(&["--epochs", "100000", "--resume", &ck, "--metrics", &link]),
        &["--metrics", "--resume"],
    );
    assert_eq!(std::fs::read(&ck).unwrap(), before);
    // --save over --resume continues the run in place.
    let r = run(&train(&["--epochs", "2", "--resume", &ck, "--save", &ck])).success();
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
    assert_ne!(std::fs::read(&ck).unwrap(), before);

    // predict --out on its --data; `-` is standard output.
    let data = tmp.file("in.csv", "x0,x1\n0,1\n1,1\n");
    let predict = |out: &str| -> Vec<String> {
        let a = [
            "predict",
            "--backend",
            "cpu",
            "--model",
            &ck,
            "--data",
            &data,
        ];
        a.iter()
            .map(|s| s.to_string())
            .chain(["--out".into(), out.into()])
            .collect()
    };
    expect_error(&predict(&data), &["--out", "--data"]);
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "x0,x1\n0,1\n1,1\n");
    let r = run(&predict("-")).success();
    assert!(r.stdout().starts_with("output_0"), "{}", r.dump());
    // export --out on its --model.
    expect_error(
        &["export", "--model", &ck, "--format", "onnx", "--out", &ck],
        &["--out", "--model"],
    );
    assert!(
        !tmp.listing().iter().any(|n| n.contains(".tmp")),
        "{:?}",
        tmp.listing()
    );
}

// ---------------------------------------------------------------------------
// Through the library
// ---------------------------------------------------------------------------

mod library {
    use super::*;
    use shadertrain::fsutil::{check_output, same_file, write_atomic, TempFile};

    #[test]
    fn check_output_refuses_what_it_should() {
        let tmp = TempDir::new("out-lib-check");
        assert!(check_output(&tmp.0).is_err());
        assert!(check_output(Path::new("/dev/null")).is_err());
        assert!(check_output(Path::new("/sys/x")).is_err());
        assert!(check_output(&tmp.path("missing/x")).is_err());
        check_output(&tmp.path(&"n".repeat(252))).unwrap();
        assert!(
            tmp.listing().is_empty(),
            "the check left {:?}",
            tmp.listing()
        );
        assert!(same_file(&tmp.path("a"), &tmp.0.join("./a")));
        assert!(!same_file(&tmp.path("a"), &tmp.path("b")));
        // The trainer checks its checkpoint path at once.
        let net = shadertrain::Network::parse("2,2,1").unwrap();
        let t = shadertrain::Trainer::cpu(&net, 4).unwrap();
        assert!(t.checkpoints("/dev/null", None).is_err());
    }

    #[test]
    fn a_live_writers_temp_file_survives_another_writers_cleanup() {
        let tmp = TempDir::new("out-lib-live");
        let target = tmp.path("c.safetensors");
        let mut held = TempFile::beside(&target).unwrap();
        let held_path = held.path().to_path_buf();
        // Another writer finishes, and cleans up what it can lock.
        write_atomic(&target, b"first").unwrap();
        assert!(
            held_path.exists(),
            "a live writer's temporary file was removed"
        );
        std::io::Write::write_all(held.file(), b"second").unwrap();
        held.commit().unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"second");
        assert_eq!(tmp.listing(), vec!["c.safetensors"]);
        // A writer that gives up removes its own file.
        drop(TempFile::beside(&target).unwrap());
        assert_eq!(tmp.listing(), vec!["c.safetensors"]);
    }

    /// A second writer in another PID namespace (`unshare --pid --fork`,
    /// holding its temporary file's lock with flock(1), as a writer does):
    /// cleanup leaves its file while it lives, removes it once it is gone.
    #[test]
    fn a_writer_in_another_pid_namespace_keeps_its_temp_file() {
        use std::io::BufRead;
        let tmp = TempDir::new("out-lib-pidns");
        let target = tmp.path("c.safetensors");
        // A temporary name of this target, as that writer would have made.
        let name = TempFile::beside(&target).unwrap().path().to_path_buf();
        let child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "flock"])
            .arg(&name)
            .args(["sh", "-c", "echo held; sleep 60"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipped: cannot run unshare");
            return;
        };
        let mut line = String::new();
        let out = child.stdout.take().unwrap();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        if line.trim() != "held" {
            let _ = child.wait();
            let mut why = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut why);
            eprintln!("skipped: unshare --pid refused here: {}", why.trim());
            return;
        }
        write_atomic(&target, b"ours").unwrap();
        let alive = name.exists();
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            alive,
            "the other namespace's writer lost its temporary file"
        );
        // Its writer gone (the namespace's processes die with unshare), the
        // lock is free: the next write removes the file.
        let t0 = Instant::now();
        while name.exists() && t0.elapsed() < Duration::from_secs(10) {
            write_atomic(&target, b"ours again").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!name.exists(), "a dead writer's temporary file stayed");
        assert_eq!(tmp.listing(), vec!["c.safetensors"]);
    }
}

/// An output written after training that fails leaves the checkpoint, which
/// was complete before it, and the message says so.
#[test]
fn a_later_failure_keeps_the_checkpoint_and_says_so() {
    let tmp = TempDir::new("out-later");
    std::fs::create_dir_all(tmp.path("plots")).unwrap();
    let ck = s(&tmp.path("c.safetensors"));
    let plot = s(&tmp.path("plots/p.png"));
    let mut args: Vec<String> = ["train", "--backend", "cpu", "--data", "spirals", "--quiet"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--epochs", "3000", "--save-every", "100"].map(String::from));
    args.extend(["--save".into(), ck.clone(), "--plot".into(), plot]);
    let child = std::process::Command::new(cli_support::bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first checkpoint is there, training goes on; the plot's
    // directory goes away under it.
    let t0 = Instant::now();
    while !Path::new(&ck).exists() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_dir_all(tmp.path("plots")).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert!(!out.status.success());
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error:"), "{err}");
    for w in [
        "p.png",
        "the checkpoint",
        "complete before this failure",
        "kept",
    ] {
        assert!(lines[0].contains(w), "{err}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("final loss"));
    let ckpt = shadertrain::checkpoint::Checkpoint::load(Path::new(&ck)).unwrap();
    assert_eq!(ckpt.state.epoch, 3000);
    assert_eq!(tmp.listing(), vec!["c.safetensors"]);
}
