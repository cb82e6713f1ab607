//! Data-parallel training ([`shadertrain::parallel`]): P workers (threads,
//! each with its own backend) give checkpoints byte-identical to one device
//! running the same P shards as micro-batches, for P = 2, 3, 4, SGD,
//! momentum and Adam, batches not divisible by P and an empty shard; the
//! replicas agree; resume equals straight; the unsplit run agrees to
//! float rounding (the bound is printed and checked); and GPU workers run
//! one kernel plan, given or resolved once, as one device would.

mod common;

use common::{gpu_or_skip, test_device};
use shadertrain::backend::Backend;
use shadertrain::data::Dataset;
use shadertrain::network::Network;
use shadertrain::optim::{Optimizer, OptimizerKind};
use shadertrain::parallel::{combine_gradients, shard_bounds, DataParallel, MicroBatches, Threads};
use shadertrain::trainer::Device as Dev;
use shadertrain::{Checkpoint, Trainer};

/// Where a check runs: the fast CPU backend (1 thread per worker, so
/// several workers fit 2 cores) or the GPU (a fresh device per worker).
enum Device {
    Cpu,
    Gpu,
}

impl Device {
    fn gpu(test: &str) -> Option<Device> {
        gpu_or_skip(test).map(|_| Device::Gpu)
    }

    fn one(&self) -> Dev {
        match self {
            Device::Cpu => Dev::Cpu { threads: 1 },
            Device::Gpu => Dev::Gpu { adapter: None },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

/// 2 × 13 = 26 spiral points: with batch 7, steps of 7, 7, 7, 5 rows.
fn data() -> Dataset {
    Dataset::spirals(13, 5)
}

fn net() -> Network {
    Network::parse("2,5:tanh,2:softmax").unwrap()
}

fn optimizer(kind: OptimizerKind) -> Optimizer {
    Optimizer::new(kind)
}

/// A run of `epochs` on `device`: its trainer, after training.
fn run(device: &Dev, kind: OptimizerKind, batch: usize, epochs: usize) -> Trainer {
    run_net(device, &net(), kind, batch, epochs)
}

/// [`run`] of another network.
fn run_net(
    device: &Dev,
    net: &Network,
    kind: OptimizerKind,
    batch: usize,
    epochs: usize,
) -> Trainer {
    let mut t = Trainer::on(device, net, batch)
        .unwrap()
        .epochs(epochs)
        .batch(batch)
        .lr(0.05)
        .seed(9)
        .optimizer(optimizer(kind))
        .unwrap();
    t.fit(&data()).unwrap();
    t
}

fn bytes(t: &mut Trainer) -> Vec<u8> {
    t.checkpoint().unwrap().to_bytes().unwrap()
}

/// Where two byte strings first differ, for the message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first differing byte at {i} of {}", a.len()),
        None => format!("lengths {} and {}", a.len(), b.len()),
    }
}

fn parallel_equals_micro_batches(device: Device) {
    let kinds = [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Adam,
    ];
    // Batch 7 splits unevenly over 2, 3 and 4; batch 3 over 4 leaves a shard empty.
    let cases: &[(usize, usize)] = match device {
        Device::Cpu => &[(2, 7), (3, 7), (4, 7), (4, 3)],
        Device::Gpu => &[(2, 7), (3, 7), (4, 3)],
    };
    for &(p, batch) in cases {
        for kind in kinds {
            let label = format!("{} P={p} batch {batch} {}", device.name(), kind.name());
            let workers = Dev::Parallel(vec![device.one(); p]);
            let micro = Dev::MicroBatches {
                device: Box::new(device.one()),
                parts: p,
            };
            let (mut a, mut b) = (run(&workers, kind, batch, 2), run(&micro, kind, batch, 2));
            let (ca, cb) = (bytes(&mut a), bytes(&mut b));
            assert!(
                ca == cb,
                "{label}: checkpoints differ: {}",
                first_difference(&ca, &cb)
            );
            // (Reading the parameters checks that every replica holds the same.)
            assert_eq!(a.history().len(), 2, "{label}");
        }
    }
}
test_device!(
    parallel_equals_micro_batches,
    parallel_equals_micro_batches_cpu,
    parallel_equals_micro_batches_gpu
);

/// Stopping after 1 of 3 epochs and resuming, with P workers, gives the
/// straight run's checkpoint; and it resumes with another P too, equal to
/// float rounding.
fn resume_equals_straight(device: Device) {
    let dir = std::env::temp_dir().join(format!(
        "shadertrain-parallel-{}-{}",
        std::process::id(),
        device.name()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.safetensors");
    let p3 = Dev::Parallel(vec![device.one(); 3]);
    let kind = OptimizerKind::Adam;
    let mut straight = run(&p3, kind, 7, 3);
    let mut first = run(&p3, kind, 7, 1);
    first.save(&path).unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    let resume = |device: &Dev| {
        let mut t = Trainer::on(device, &net(), 7)
            .unwrap()
            .resume(&ckpt)
            .unwrap();
        t = t.epochs(3);
        t.fit(&data()).unwrap();
        t
    };
    let mut resumed = resume(&p3);
    let (a, b) = (bytes(&mut straight), bytes(&mut resumed));
    assert!(
        a == b,
        "{}: resumed differs from straight: {}",
        device.name(),
        first_difference(&a, &b)
    );
    // A different P resumes the same checkpoint; the result agrees to rounding.
    let p2 = Dev::Parallel(vec![device.one(); 2]);
    let mut other = resume(&p2);
    let (x, y) = (
        straight.backend().params().unwrap().data,
        other.backend().params().unwrap().data,
    );
    let worst = max_rel(&x, &y);
    assert!(
        worst < 1e-4,
        "{}: P=2 after P=3 differs by {worst:e}",
        device.name()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
test_device!(
    resume_equals_straight,
    resume_equals_straight_cpu,
    resume_equals_straight_gpu
);

/// Largest `|a − b| / max(|b|, 1e-3)`.
fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs() / (y.abs() as f64).max(1e-3))
        .fold(0.0, f64::max)
}

/// Against the unsplit single-device run, P workers agree to float rounding:
/// the largest relative parameter difference after 2 epochs is printed and
/// must stay under 1e-4 (measured: see the message).
fn unsplit_agrees_to_rounding(device: Device) {
    for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
        let mut one = run(&device.one(), kind, 7, 2);
        let reference = one.backend().params().unwrap().data;
        for p in [1, 2, 3, 4] {
            let mut t = run(&Dev::Parallel(vec![device.one(); p]), kind, 7, 2);
            let got = t.backend().params().unwrap().data;
            let worst = max_rel(&got, &reference);
            eprintln!(
                "{} {} P={p}: largest relative difference from the unsplit run {worst:.3e}",
                device.name(),
                kind.name()
            );
            assert!(
                worst < 1e-4,
                "{} {} P={p}: {worst:e}",
                device.name(),
                kind.name()
            );
        }
    }
}
test_device!(
    unsplit_agrees_to_rounding,
    unsplit_agrees_to_rounding_cpu,
    unsplit_agrees_to_rounding_gpu
);

#[test]
fn shards_cover_the_batch_in_order() {
    for n in 1..20 {
        for p in 1..6 {
            let mut next = 0;
            for k in 0..p {
                let r = shard_bounds(n, p, k);
                assert_eq!(r.start, next, "n {n} p {p} k {k}");
                assert!(
                    r.len() == n / p || r.len() == n / p + 1,
                    "n {n} p {p} k {k}: {r:?}"
                );
                next = r.end;
            }
            assert_eq!(next, n);
        }
    }
}

#[test]
fn one_shard_combines_exactly_and_empty_shards_add_nothing() {
    let g = [0.1f32, -3.5e-7, 1.0e30, f32::MIN_POSITIVE];
    let mut out = [0f32; 4];
    combine_gradients(&[(&g, 7)], 7, &mut out);
    assert_eq!(out, g);
    // Two halves of equal gradients average back to it; an empty shard is skipped.
    combine_gradients(&[(&g, 3), (&[f32::NAN; 4], 0), (&g, 3)], 6, &mut out);
    assert_eq!(out, g);
}

/// The library form: groups built by hand, a step each, the same bits.
#[test]
fn threads_and_micro_batches_take_the_same_step() {
    let net = Network::parse("3,4,2").unwrap();
    let cpu = |_| Ok(Box::new(common::fast_cpu(&net, 3, 1)) as _);
    let mut a = DataParallel::new(&net, 5, Box::new(Threads::open(2, cpu).unwrap())).unwrap();
    let mut b =
        DataParallel::new(&net, 5, Box::new(MicroBatches::new(2, cpu(0).unwrap()))).unwrap();
    let (x, y) = common::batch_for(&net, 5, "parallel step");
    for d in [&mut a, &mut b] {
        d.set_params(&net.init(4)).unwrap();
        d.load_batch(&x, &y).unwrap();
        d.step(0.3).unwrap();
    }
    assert_eq!(a.params().unwrap().data, b.params().unwrap().data);
    assert_eq!(a.take_totals().unwrap(), b.take_totals().unwrap());
    let replicas = a.replica_params().unwrap();
    assert_eq!(replicas.len(), 2);
    assert!(replicas[0] == replicas[1], "the replicas differ");
    // Activations come back whole, in row order, from either.
    let (aa, ab) = (
        a.read_activations(2).unwrap(),
        b.read_activations(2).unwrap(),
    );
    assert_eq!(aa.len(), 5 * 2);
    assert_eq!(aa, ab);
}

#[test]
fn mixed_devices_and_empty_lists_are_refused() {
    let e = Trainer::on(&Dev::Parallel(vec![]), &net(), 4)
        .err()
        .unwrap();
    assert!(e.to_string().contains("devices"), "{e}");
    let zero = Dev::MicroBatches {
        device: Box::new(Dev::Cpu { threads: 1 }),
        parts: 0,
    };
    let e = Trainer::on(&zero, &net(), 4).err().unwrap();
    assert!(e.to_string().contains("micro-batches"), "{e}");
}

/// Dropout under P workers: each shard's masks are keyed on its rows in
/// the whole batch, so P threads give the bytes of P micro-batches, and
/// both agree with the one-device run to float rounding (printed), while
/// the same run without dropout is far from it (the masks matter).
fn dropout_under_several_workers(device: Device) {
    let ps: &[usize] = match device {
        Device::Cpu => &[2, 3, 4],
        Device::Gpu => &[3],
    };
    let kind = OptimizerKind::Adam;
    for spec in [
        "2,6:relu:dropout=0.5,2:softmax",
        "2,6:tanh:dropout=0.4,5:dropout=0.3,2:softmax",
    ] {
        let net = Network::parse(spec).unwrap();
        let mut one = run_net(&device.one(), &net, kind, 7, 2);
        let reference = one.backend().params().unwrap().data;
        let plain = (net.clone())
            .with_dropout(&vec![0.0; net.layers().len()])
            .unwrap();
        let mut undropped = run_net(&device.one(), &plain, kind, 7, 2);
        let far = max_rel(&undropped.backend().params().unwrap().data, &reference);
        assert!(far > 1e-2, "{spec}: dropout changed little ({far:e})");
        for &p in ps {
            let label = format!("{} {spec} P={p}", device.name());
            let workers = Dev::Parallel(vec![device.one(); p]);
            let micro = Dev::MicroBatches {
                device: Box::new(device.one()),
                parts: p,
            };
            let mut a = run_net(&workers, &net, kind, 7, 2);
            let mut b = run_net(&micro, &net, kind, 7, 2);
            let (ca, cb) = (bytes(&mut a), bytes(&mut b));
            assert!(
                ca == cb,
                "{label}: threads and micro-batches differ: {}",
                first_difference(&ca, &cb)
            );
            let worst = max_rel(&a.backend().params().unwrap().data, &reference);
            eprintln!("{label}: largest relative difference from one device {worst:.3e}");
            assert!(worst < 1e-4, "{label}: {worst:e} from one device");
        }
    }
}
test_device!(
    dropout_under_several_workers,
    dropout_under_several_workers_cpu,
    dropout_under_several_workers_gpu
);

/// A worker's device lost mid-run: the next step fails within a bounded
/// time with one error naming the worker and the loss, not a hang or a
/// panic, and the other workers take no more jobs.
#[test]
fn a_lost_device_ends_the_run_naming_its_worker() {
    if gpu_or_skip("a_lost_device_ends_the_run_naming_its_worker").is_none() {
        return;
    }
    let net = net();
    let ctxs: Vec<_> = (0..3)
        .map(|_| shadertrain::GpuContext::new().unwrap())
        .collect();
    let open =
        |k: usize| Ok(Box::new(shadertrain::GpuBackend::new(ctxs[k].clone(), &net, 3)?) as _);
    let mut dp = DataParallel::new(&net, 7, Box::new(Threads::open(3, open).unwrap())).unwrap();
    let (x, y) = common::batch_for(&net, 7, "device loss");
    dp.set_params(&net.init(1)).unwrap();
    dp.load_batch(&x, &y).unwrap();
    dp.step(0.1).unwrap();
    ctxs[1].device.destroy();
    let t0 = std::time::Instant::now();
    let e = (0..8)
        .find_map(|_| dp.step(0.1).err())
        .expect("a step on a lost device fails");
    let msg = e.to_string();
    assert!(
        msg.starts_with("worker 1 (") && msg.contains("device lost"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert!(t0.elapsed().as_secs() < 60, "took {:?}", t0.elapsed());
    // Afterwards every call fails at once, naming a stopped worker.
    let again = dp.step(0.1).unwrap_err().to_string();
    assert!(
        again.contains("worker 1") && again.contains("stopped"),
        "{again}"
    );
}

/// Clipping under P workers: every worker clips the one combined gradient,
/// so the checkpoint equals the micro-batched run's, and the epochs count
/// the clipped updates once, as the unsplit run does.
fn clipping_counts_each_update_once(device: Device) {
    let clipped = |d: &Dev| {
        let mut t = Trainer::on(d, &net(), 7)
            .unwrap()
            .epochs(2)
            .batch(7)
            .lr(0.05)
            .seed(9)
            .optimizer(Optimizer {
                clip_norm: Some(0.05),
                ..optimizer(OptimizerKind::Momentum)
            })
            .unwrap();
        t.fit(&data()).unwrap();
        let counts: Vec<u64> = t.history().iter().map(|e| e.clipped).collect();
        (bytes(&mut t), counts)
    };
    let workers = Dev::Parallel(vec![device.one(); 3]);
    let micro = Dev::MicroBatches {
        device: Box::new(device.one()),
        parts: 3,
    };
    let (a, na) = clipped(&workers);
    let (b, nb) = clipped(&micro);
    let (_, n1) = clipped(&device.one());
    assert!(a == b, "checkpoints differ: {}", first_difference(&a, &b));
    // 26 rows in batches of 7: 4 updates an epoch, each clipped at this limit.
    assert_eq!(n1, vec![4, 4], "the unsplit run's clipped updates");
    assert_eq!(na, n1, "P workers count each clipped update once");
    assert_eq!(nb, n1);
}
test_device!(
    clipping_counts_each_update_once,
    clipping_counts_each_update_once_cpu,
    clipping_counts_each_update_once_gpu
);

/// The plan of [`workers_run_one_plan_gpu`]: every product of [`net`] on
/// another configuration (generated cores of several shapes, and the loops core).
const MIXED_PLAN: &str = "f0=gen:8x8:4x4:k8,d0=loops:8x8:4x4:k8,g0=gen:4x16:4x8:k16,f1=gen:16x8:8x4:k16,g1=gen:8x8:16x16:k8";

/// Every GPU worker runs one kernel plan, resolved once and handed to it:
/// with a given plan of several configurations, and with the heuristic's,
/// P threads report the plan (and its sources) that P micro-batches on one
/// device report, record it in the checkpoint, and write that run's
/// checkpoint bytes. CPU workers ignore GPU options.
#[test]
fn workers_run_one_plan_gpu() {
    use shadertrain::gpu::{GpuOptions, KernelPlan, Source, TuneMode};
    let Some(device) = Device::gpu("workers_run_one_plan_gpu") else {
        return;
    };
    let net = net();
    let given = KernelPlan::parse(&net, MIXED_PLAN, Source::Given).unwrap();
    assert_eq!(given.configs().len(), 5, "{given}");
    let cases = [
        (
            "given",
            GpuOptions::default().with_plan(given),
            Some("given"),
        ),
        (
            "heuristic",
            GpuOptions {
                tune: TuneMode::Off,
                ..GpuOptions::default()
            },
            Some("heuristic"),
        ),
    ];
    for (label, options, source) in &cases {
        let train = |d: &Dev| {
            let mut t = Trainer::on_with(d, &net, 7, Some(options))
                .unwrap()
                .epochs(2)
                .batch(7)
                .lr(0.05)
                .seed(9)
                .optimizer(optimizer(OptimizerKind::Momentum))
                .unwrap();
            t.fit(&data()).unwrap();
            t
        };
        let workers = Dev::Parallel(vec![device.one(); 3]);
        let micro = Dev::MicroBatches {
            device: Box::new(device.one()),
            parts: 3,
        };
        let (mut a, mut b) = (train(&workers), train(&micro));
        let (ka, kb) = (a.backend().kernels(), b.backend().kernels());
        let ka = ka.unwrap_or_else(|| panic!("{label}: the workers report no kernels"));
        assert_eq!(Some(&ka), kb.as_ref(), "{label}");
        if *label == "given" {
            assert_eq!(ka.kernel_config, MIXED_PLAN);
        }
        let sources: Vec<&str> = ka.kernel_configs.iter().map(|p| p.source).collect();
        assert!(
            sources.iter().all(|s| Some(*s) == *source),
            "{label}: {sources:?}"
        );
        let ckpt = a.checkpoint().unwrap();
        assert_eq!(
            ckpt.state.kernel_config.as_deref(),
            Some(&*ka.kernel_config)
        );
        let (ca, cb) = (bytes(&mut a), bytes(&mut b));
        assert!(
            ca == cb,
            "{label}: threads and micro-batches differ: {}",
            first_difference(&ca, &cb)
        );
    }
    // CPU workers have no kernels to configure.
    let cpu = Dev::Parallel(vec![Device::Cpu.one(); 2]);
    let mut t = Trainer::on_with(&cpu, &net, 7, Some(&cases[0].1)).unwrap();
    assert_eq!(t.backend().kernel_config(), None);
}

/// Workers built by hand that run different plans are refused in one line
/// naming the worker and both plans: their shards would not round as one
/// device's.
#[test]
fn workers_on_different_plans_are_refused() {
    use shadertrain::gpu::{GpuBackend, GpuOptions, KernelConfig, KernelPlan, Source};
    let Some(ctx) = gpu_or_skip("workers_on_different_plans_are_refused") else {
        return;
    };
    let net = net();
    let configs = ["gen:8x8:4x4:k8", "gen:4x16:4x8:k16"];
    let open = |k: usize| {
        let c = KernelConfig::parse(configs[k]).unwrap();
        let plan = KernelPlan::uniform(&net, c, Source::Given);
        let options = GpuOptions::BASE.with_plan(plan);
        Ok(Box::new(GpuBackend::with_options(ctx.clone(), &net, 4, options)?) as _)
    };
    let e = Threads::open(2, open).err().expect("refused");
    let msg = e.to_string();
    assert!(msg.starts_with("worker 1 ("), "{msg}");
    for c in configs {
        assert!(msg.contains(c), "{msg}");
    }
    assert!(
        msg.contains("one kernel plan") && !msg.contains('\n'),
        "{msg}"
    );
}
