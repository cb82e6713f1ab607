//! Benchmark workloads and the timing of a training step, shared by the
//! `bench` command and the criterion benches.
//!
//! A timed step is `step(lr)` followed by [`Backend::sync`], so a GPU's work is
//! inside the timed region, not only its recording. FLOPs per step count as
//! `6 · batch · Σ in·out` (forward 2, backward 4), as the PyTorch peer does.

use crate::backend::{Backend, Metric};
use crate::error::{Error, Result};
use crate::network::{Network, Params};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// A named benchmark shape: sigmoid layers, MSE, SGD, random data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    /// `W0` … `W3`.
    pub name: &'static str,
    /// Layer sizes, inputs first.
    pub layers: &'static [usize],
    /// Samples per step.
    pub batch: usize,
    /// Timed steps that give a stable median on a 2-core CPU and on a GPU.
    pub steps: usize,
}

/// The workloads of the performance issue, smallest first.
pub const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "W0",
        layers: &[2, 2, 2],
        batch: 1,
        steps: 2000,
    },
    Workload {
        name: "W1",
        layers: &[784, 256, 256, 10],
        batch: 1024,
        steps: 50,
    },
    Workload {
        name: "W2",
        layers: &[1024, 1024, 1024, 1024],
        batch: 1024,
        steps: 10,
    },
    Workload {
        name: "W3",
        layers: &[4096, 4096, 4096],
        batch: 4096,
        steps: 3,
    },
];

/// The workloads named in the environment variable `var` (comma-separated,
/// any case), or in `default` when it is unset; for the criterion benches.
pub fn workloads_from_env(var: &str, default: &str) -> Vec<Workload> {
    let pick = std::env::var(var).unwrap_or_else(|_| default.into());
    WORKLOADS
        .iter()
        .filter(|w| {
            pick.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case(w.name))
        })
        .copied()
        .collect()
}

/// The GPU for the criterion benches, or `None` after printing why they skip.
pub fn gpu_for_benches() -> Option<std::sync::Arc<crate::gpu::GpuContext>> {
    match crate::gpu::GpuContext::new() {
        Ok(ctx) => {
            eprintln!("gpu benches on {}", ctx.describe());
            Some(ctx)
        }
        Err(e) => {
            eprintln!("skipping gpu benches: {e}");
            None
        }
    }
}

impl Workload {
    /// The workload called `name` (`W0`…`W3`, any case).
    pub fn named(name: &str) -> Result<Workload> {
        WORKLOADS
            .iter()
            .find(|w| w.name.eq_ignore_ascii_case(name))
            .copied()
            .ok_or_else(|| {
                Error::Invalid(format!("unknown workload '{name}' (known: W0, W1, W2, W3)"))
            })
    }

    /// Its network.
    pub fn network(&self) -> Network {
        // Every workload has at least two sizes, all non-zero.
        Network::new(self.layers).unwrap_or_else(|_| unreachable!())
    }
}

/// Floating-point operations of one training step: `6 · batch · Σ in·out`.
pub fn flops_per_step(net: &Network, batch: usize) -> f64 {
    let macs: usize = net.layers().iter().map(|l| l.n_in * l.n_out).sum();
    6.0 * batch as f64 * macs as f64
}

/// A seeded random batch, uniform in (0, 1) and never zero:
/// `x (batch, inputs)`, `y (batch, outputs)`.
/// A batch that cannot be held in memory is an error.
pub fn random_batch(net: &Network, batch: usize, seed: u64) -> Result<(Vec<f32>, Vec<f32>)> {
    let width = net.inputs() + net.outputs();
    let need = crate::memory::bytes(&[(batch, width.saturating_mul(4))]);
    crate::memory::ensure(
        need,
        &format!("a batch of {batch}"),
        &[crate::error::Setting::Batch],
    )?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(0.01f32..1.0)).collect() };
    let x = draw(batch * net.inputs());
    let y = draw(batch * net.outputs());
    Ok((x, y))
}

/// Milliseconds per step, as measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    /// One entry per timed step, in order.
    pub ms: Vec<f64>,
}

impl Timing {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median step, in ms.
    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
        }
    }

    /// The fastest step, in ms.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    /// The slowest step, in ms.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// The most timed steps [`time_steps`] takes: it keeps every step's time
/// (8 bytes each) for the median, so the count is bounded, not the memory.
pub const MAX_STEPS: usize = 10_000_000;

/// Loads `params` and the batch, runs `warmup` untimed steps, then times
/// `steps` steps one by one, each waited for. Returns the timing and the
/// parameters after all `warmup + steps` steps.
pub fn time_steps<B: Backend<Scalar = f32> + ?Sized>(
    backend: &mut B,
    params: &Params<f32>,
    (x, y): (&[f32], &[f32]),
    lr: f32,
    warmup: usize,
    steps: usize,
) -> Result<(Timing, Params<f32>)> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::setting(
            crate::error::Setting::Steps,
            steps,
            format!("must be from 1 to {MAX_STEPS}"),
        ));
    }
    backend.set_params(params)?;
    backend.set_metric(Metric::None)?;
    backend.load_batch(x, y)?;
    for _ in 0..warmup {
        backend.step(lr)?;
    }
    backend.sync()?;
    let mut ms = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        backend.step(lr)?;
        backend.sync()?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    // The loss totals grow with every step; drop them so a long run cannot overflow.
    backend.take_totals()?;
    Ok((Timing { ms }, backend.params()?))
}

/// The largest `|a − b|` over two parameter sets of the same network.
pub fn max_param_diff(a: &Params<f32>, b: &Params<f32>) -> Result<f64> {
    if a.network() != b.network() {
        return Err(Error::Shape("parameters of different networks".into()));
    }
    Ok(a.data
        .iter()
        .zip(&b.data)
        .map(|(&p, &q)| (p as f64 - q as f64).abs())
        .fold(0.0, f64::max))
}
