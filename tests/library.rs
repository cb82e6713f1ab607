//! The library's front door, `Trainer`, on the CPU and on the GPU: training
//! with validation, evaluation, prediction, and a checkpoint that the CLI and
//! `Checkpoint::load` read back.

mod common;

use common::*;
use shadertrain::checkpoint::Checkpoint;
use shadertrain::data::{Dataset, Task};
use shadertrain::gpu::GpuBackend;
use shadertrain::network::Network;
use shadertrain::{Error, Setting, Trainer};

/// Three noisy clusters in 4-D, one-hot over 3 classes.
fn clusters(n: usize, label: &str) -> Dataset {
    let mut g = rng(label);
    let noise = random(&mut g, n * 4, -0.3, 0.3);
    let mut x = Vec::with_capacity(n * 4);
    let mut y = vec![0.0; n * 3];
    for i in 0..n {
        let c = i % 3;
        for k in 0..4 {
            x.push(if k == c { 1.0 } else { 0.0 } + noise[i * 4 + k]);
        }
        y[i * 3 + c] = 1.0;
    }
    Dataset::from_vecs(
        "clusters",
        (4, 3),
        x,
        y,
        Task::Classification { classes: 3 },
    )
    .unwrap()
}

fn exercise(mut t: Trainer, what: &str) {
    let (train, val) = (clusters(300, "lib train"), clusters(90, "lib val"));
    let mut seen = Vec::new();
    let new = t
        .fit_with(&train, Some(&val), |e| seen.push(e.epoch))
        .unwrap();
    assert_eq!(seen, (1..=15).collect::<Vec<_>>(), "{what}");
    assert_eq!(new.len(), 15);
    assert!(new[14].loss < new[0].loss, "{what}: the loss goes down");
    assert!(new[14].val_accuracy.unwrap() > 0.9, "{what}: {:?}", new[14]);
    let (totals, metric) = t.evaluate(&val).unwrap();
    assert!(totals.accuracy(metric).unwrap() > 0.9, "{what}");
    let out = t.predict(&val).unwrap();
    assert_eq!(out.len(), 90 * 3);
    // Going on to 20 epochs continues the run's history.
    let mut t = t.epochs(20);
    assert_eq!(t.fit(&train).unwrap().len(), 5);
    assert_eq!(t.history().len(), 20);
    let dir = std::env::temp_dir().join(format!("shadertrain-lib-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.safetensors");
    t.save(&path).unwrap();
    let c = Checkpoint::load(&path).unwrap();
    assert_eq!(c.state.epoch, 20);
    assert_eq!(c.state.history.len(), 20);
    assert_eq!(c.params.data, t.backend().params().unwrap().data);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `Trainer::cpu`, or a `Trainer` around a GPU backend.
fn trainer_on(device: Device) {
    let net = Network::parse("4,12:tanh,3:softmax").unwrap();
    let t = match &device {
        Device::Cpu => Trainer::cpu(&net, 16).unwrap(),
        Device::Gpu(ctx) => Trainer::new(Box::new(GpuBackend::new(ctx.clone(), &net, 16).unwrap())),
    };
    // Trainer::new tells a GPU backend from a CPU one (run records say which).
    let kind = match device {
        Device::Cpu => shadertrain::trainer::Kind::Cpu,
        Device::Gpu(_) => shadertrain::trainer::Kind::Gpu,
    };
    assert_eq!(t.kind(), kind);
    exercise(t.epochs(15).lr(0.5).seed(3), device.name());
}

test_device!(trainer_on, trainer_on_the_cpu, trainer_on_the_gpu);

#[test]
fn trainer_refuses_bad_settings_and_data() {
    let net = Network::parse("4,5,3").unwrap();
    let t = Trainer::new(Box::new(fast_cpu(&net, 8, 1)));
    let mut bad = t.epochs(0);
    let e = bad.fit(&clusters(30, "x")).unwrap_err();
    assert!(
        matches!(&e, Error::Setting { setting: Setting::Epochs, value, .. } if value == "0"),
        "zero epochs: {e:?}"
    );
    let mut t = bad.epochs(2).lr(f32::NAN);
    let e = t.fit(&clusters(30, "x")).unwrap_err();
    assert!(
        matches!(&e, Error::Setting { setting: Setting::LearningRate, value, .. } if value == "NaN"),
        "NaN learning rate: {e:?}"
    );
    // A library user reads the library's names for settings, never a flag;
    // the CLI renders the same error with its flags.
    let msg = e.to_string();
    assert!(
        msg.starts_with("learning rate NaN:") && !msg.contains("--"),
        "{msg}"
    );
    assert!(e.render(|_| "--flag").starts_with("--flag NaN:"), "{msg}");
    let mut t = t.lr(0.1);
    assert!(t.fit(&Dataset::xor()).is_err(), "data of another width");
    assert!(Dataset::from_vecs("d", (2, 1), vec![1.0; 5], vec![0.0; 2], Task::Regression).is_err());
    assert!(Dataset::from_vecs("d", (2, 1), vec![1.0; 4], vec![0.0; 3], Task::Regression).is_err());
    assert!(Dataset::from_vecs("d", (1, 1), vec![f32::NAN], vec![0.0], Task::Regression).is_err());
}

/// Through the library alone: Adam, a schedule and a standardiser; a run
/// saved after 3 epochs and resumed to 6 equals 6 straight epochs; the
/// confusion matrix of its predictions adds up.
#[test]
fn trainer_resume_matches_a_straight_run() {
    use shadertrain::data::Standardizer;
    use shadertrain::optim::{Optimizer, OptimizerKind};
    use shadertrain::train::{confusion_matrix, Schedule};
    let net = Network::parse("4,10:relu,3:softmax").unwrap();
    let mut data = clusters(120, "lib resume");
    let z = Standardizer::fit(&data);
    z.apply(&mut data).unwrap();
    let make = |epochs: usize| {
        Trainer::cpu(&net, 8)
            .unwrap()
            .epochs(epochs)
            .lr(0.02)
            .seed(9)
            // Not cosine: it spans --epochs, which differ between the runs.
            .schedule(Schedule::Step {
                every: 2,
                gamma: 0.5,
            })
            .standardizer(z.clone())
            .optimizer(Optimizer::new(OptimizerKind::Adam))
            .unwrap()
    };
    let mut straight = make(6);
    straight.fit(&data).unwrap();
    let mut first = make(3);
    first.fit(&data).unwrap();
    let dir = std::env::temp_dir().join(format!("shadertrain-lib-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("half.safetensors");
    first.save(&path).unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(ckpt.standardizer.as_ref(), Some(&z));
    let mut resumed = Trainer::cpu(&net, 8)
        .unwrap()
        .epochs(6)
        .resume(&ckpt)
        .unwrap();
    resumed.fit(&data).unwrap();
    let (a, b) = (
        straight.backend().params().unwrap(),
        resumed.backend().params().unwrap(),
    );
    assert!(a
        .data
        .iter()
        .zip(&b.data)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_eq!(straight.history().len(), 6);
    assert_eq!(resumed.history().len(), 6);
    for (x, y) in straight.history().iter().zip(resumed.history()) {
        assert_eq!(x.loss.to_bits(), y.loss.to_bits(), "epoch {}", x.epoch);
    }
    let out = resumed.predict(&data).unwrap();
    let c = confusion_matrix(&out, &data);
    assert_eq!(c.len(), 3);
    assert_eq!(c.iter().flatten().sum::<u64>(), 120);
    let _ = std::fs::remove_dir_all(&dir);
}
