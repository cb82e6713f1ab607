//! Data-parallel training: [`DataParallel`], a [`Backend`] over P workers,
//! so the training loop, checkpoints, resume, validation and every optimiser
//! work unchanged.
//!
//! **How a batch is split.** The batch a step loads (the global batch,
//! `--batch`) is cut into P contiguous shards on fixed boundaries: shard `k`
//! of a batch of `n` rows is rows `k·n/P .. (k+1)·n/P` ([`shard_bounds`]),
//! so sizes differ by at most one and a batch smaller than P leaves some
//! shards empty. Worker `k` computes its shard's gradients, each averaged
//! over its `n_k` rows; the step's gradient is
//! `Σ_k g_k · n_k / n` summed in shard order, in f64, rounded once to f32
//! ([`combine_gradients`]), never in an order a transport chooses. Every
//! worker uploads that sum ([`Backend::set_gradients`]) and applies the same
//! update, so the replicas stay identical. Loss totals are summed per step in
//! shard order the same way.
//!
//! **Dropout.** A mask is keyed on a row's index in the whole batch
//! ([`crate::cpu::DropoutKey`]): each worker runs its shard as
//! [`Backend::train_pass`] from the shard's first row, so P shards drop the
//! units the unsplit batch drops.
//!
//! **What is equal to what.** The arithmetic depends only on the shards, not
//! on where they run: P threads each with its own device ([`Threads`]), one
//! device running the P shards one after another as micro-batches
//! ([`MicroBatches`], the reference), and P MPI ranks (the `mpi` feature)
//! give the same bits on the same driver. Against the unsplit run (P = 1, or
//! no `DataParallel` at all) the gradient sums in another order: equal to
//! float rounding. With P = 1 the combination is exact (`g · n / n = g`).
//!
//! ```
//! use shadertrain::backend::Backend;
//! use shadertrain::network::Network;
//! use shadertrain::parallel::{DataParallel, MicroBatches, Threads};
//! use shadertrain::FastCpuBackend;
//! # fn main() -> shadertrain::Result<()> {
//! let net = Network::parse("2,3,1")?;
//! let cpu = |_| Ok(Box::new(FastCpuBackend::new(&net, 2, 1)?) as _);
//! let mut threads = DataParallel::new(&net, 4, Box::new(Threads::open(2, cpu)?))?;
//! let mut micro = DataParallel::new(&net, 4, Box::new(MicroBatches::new(2, cpu(0)?)))?;
//! let (x, y) = ([0., 0., 0., 1., 1., 0., 1., 1.], [0., 1., 1., 0.]);
//! for b in [&mut threads, &mut micro] {
//!     b.set_params(&net.init(3))?;
//!     b.load_batch(&x, &y)?;
//!     b.step(0.5)?;
//! }
//! assert_eq!(threads.params()?.data, micro.params()?.data);
//! # Ok(())
//! # }
//! ```

mod local;
#[cfg(feature = "mpi")]
pub mod mpi;

pub use local::{MicroBatches, Threads};

use crate::backend::{check_batch, check_layer, Backend, Metric, Totals};
use crate::error::{Error, Result, Setting};
use crate::gpu::GpuOptions;
use crate::network::{Network, Params};
use crate::optim::Optimizer;
use crate::trainer::{Device, Fallback, Kind};
use std::ops::Range;
use std::sync::Arc;

/// A backend a worker owns; `Send`, so it can live on the worker's thread.
pub type WorkerBackend = Box<dyn Backend<Scalar = f32> + Send>;

/// Rows `k·n/P .. (k+1)·n/P` of a batch of `n`: shard `k` of `p`.
pub fn shard_bounds(n: usize, p: usize, k: usize) -> Range<usize> {
    let at = |k: usize| (k as u128 * n as u128 / p.max(1) as u128) as usize;
    at(k)..at(k + 1)
}

/// The largest shard of a batch of `n` rows over `p` workers: what each
/// worker's backend must hold.
pub fn shard_capacity(n: usize, p: usize) -> usize {
    n.div_ceil(p.max(1)).max(1)
}

/// `out[e] = Σ_k parts[k].0[e] · parts[k].1 / n`, in the order of `parts`,
/// in f64, rounded once: the gradient of a batch of `n` rows from its
/// shards' gradients `g_k`, each averaged over its `n_k` rows. Shards with
/// no rows add nothing. (Each product is exact in f64: 24 + 40 bits.)
// parts[k].0, out: (len)
pub fn combine_gradients(parts: &[(&[f32], usize)], n: usize, out: &mut [f32]) {
    let n = n.max(1) as f64;
    for (e, o) in out.iter_mut().enumerate() {
        let mut sum = 0f64;
        for &(g, rows) in parts.iter().filter(|(_, rows)| *rows > 0) {
            sum += g[e] as f64 * rows as f64;
        }
        *o = (sum / n) as f32;
    }
}

/// The totals of several shards (or steps) summed in the order given.
pub fn sum_totals(parts: impl IntoIterator<Item = Totals>, into: &mut Totals) {
    for t in parts {
        into.loss_sum += t.loss_sum;
        into.samples += t.samples;
        into.correct += t.correct;
    }
}

/// The refusal of an empty device list.
pub(crate) fn no_devices() -> Error {
    Error::setting(Setting::Devices, "", "names no device")
}

/// Opens a [`Device::Parallel`], [`Device::MicroBatches`] or [`Device::Mpi`]
/// for batches of up to `capacity` rows: each worker's backend holds one
/// shard ([`shard_capacity`]), GPU workers built with `gpu` (else
/// [`GpuOptions::default`]) and running one plan ([`open_threads`]). CPU
/// workers asked for 0 threads (one per core) share the cores: `cores / P`
/// threads each.
pub(crate) fn open(
    device: &Device,
    net: &Network,
    capacity: usize,
    gpu: Option<&GpuOptions>,
) -> Result<(WorkerBackend, Kind, Option<Fallback>)> {
    let (group, kind, fallback) = group_for(device, net, capacity, gpu)?;
    Ok((
        Box::new(DataParallel::new(net, capacity, group)?),
        kind,
        fallback,
    ))
}

/// The workers of a [`Device::Parallel`], [`Device::MicroBatches`] or
/// [`Device::Mpi`], their kind, and why `Auto` chose the CPU.
fn group_for(
    device: &Device,
    net: &Network,
    capacity: usize,
    gpu: Option<&GpuOptions>,
) -> Result<(Box<dyn Group + Send>, Kind, Option<Fallback>)> {
    match device {
        Device::MicroBatches { device, parts } => {
            if *parts == 0 {
                return Err(Error::setting(
                    Setting::MicroBatches,
                    0,
                    "must be at least 1",
                ));
            }
            // One device: one plan already.
            let rows = shard_capacity(capacity, *parts);
            let (b, kind, fallback) = device.open_with(net, rows, gpu)?;
            Ok((Box::new(MicroBatches::new(*parts, b)), kind, fallback))
        }
        Device::Parallel(list) => open_threads(list, net, capacity, gpu),
        Device::Mpi(device) => open_rank(device, net, capacity, gpu),
        _ => Err(Error::setting(
            Setting::Devices,
            1,
            "names a single device; data-parallel training needs a list",
        )),
    }
}

/// One worker thread per device of `list`, each sized for one shard; CPU
/// workers asked for 0 threads share the cores.
///
/// Every GPU worker runs one kernel plan: the first GPU worker resolves it
/// on its adapter from `gpu` (a given plan, the cache, `--tune auto`'s
/// measurements, or the heuristic; [`GpuOptions::resolved`]) and the others
/// are handed it. A shard's products then sum in the same order on every
/// worker as on the one device of [`Device::MicroBatches`], so the run
/// equals that reference bit for bit (on one driver); a plan per worker
/// would round each shard's gradient its own way. Where adapters differ,
/// the plan is the first one's: a worker whose adapter cannot run it
/// (a tile over its workgroup memory) is refused, naming a way out.
fn open_threads(
    list: &[Device],
    net: &Network,
    capacity: usize,
    gpu: Option<&GpuOptions>,
) -> Result<(Box<dyn Group + Send>, Kind, Option<Fallback>)> {
    if list.is_empty() {
        return Err(no_devices());
    }
    let p = list.len();
    let rows = shard_capacity(capacity, p);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut kinds = Vec::with_capacity(p);
    // The first GPU worker's options with its plan fixed, and its adapter.
    let mut shared: Option<(GpuOptions, String)> = None;
    let group = Threads::open(p, |k| {
        let dev = match &list[k] {
            Device::Cpu { threads: 0 } => Device::Cpu {
                threads: (cores / p).max(1),
            },
            d => d.clone(),
        };
        // An adapter a worker cannot open was named in the device list.
        let resolved = dev.resolve().map_err(|e| match e {
            Error::Setting {
                setting: Setting::Adapter,
                value,
                problem,
            } => Error::setting(Setting::Devices, value, problem),
            e => e,
        })?;
        if let crate::trainer::Resolved::Gpu(ctx) = &resolved {
            match &shared {
                None => {
                    let o = gpu.cloned().unwrap_or_default().resolved(ctx, net, rows)?;
                    shared = Some((o, ctx.describe()));
                }
                Some((o, first)) => {
                    if let Some(plan) = &o.plan {
                        plan.check(&ctx.limits).map_err(|e| {
                            Error::setting(
                                Setting::Devices,
                                list.len(),
                                format!(
                                    "every worker runs one kernel plan, and this adapter cannot run the one chosen on {first} ({}): give --kernel-config a configuration every adapter runs, e.g. gen:8x8:4x4:k8",
                                    crate::error::one_line(&e.to_string(), 200)
                                ),
                            )
                        })?;
                    }
                }
            }
        }
        let (b, kind, fallback) = resolved.open(net, rows, shared.as_ref().map(|s| &s.0))?;
        kinds.push((kind, fallback));
        Ok(b)
    })?;
    let (kind, fallback) = kinds[0].clone();
    if kinds.iter().any(|(k, _)| *k != kind) {
        return Err(Error::setting(
            Setting::Devices,
            list.len(),
            "mixes CPU and GPU workers, whose updates round differently: the replicas would drift apart; use one kind",
        ));
    }
    Ok((Box::new(group), kind, fallback))
}

/// This MPI rank's worker on `device`, sized for one shard; a GPU runs the
/// plan rank 0 resolved ([`mpi::agree_on_plan`]).
#[cfg(feature = "mpi")]
fn open_rank(
    device: &Device,
    net: &Network,
    capacity: usize,
    gpu: Option<&GpuOptions>,
) -> Result<(Box<dyn Group + Send>, Kind, Option<Fallback>)> {
    let (_, size) = mpi::init()?;
    let rows = shard_capacity(capacity, size);
    let resolved = device.resolve()?;
    let gpu = mpi::agree_on_plan(&resolved, net, rows, gpu)?;
    let (b, kind, fallback) = resolved.open(net, rows, gpu.as_ref())?;
    Ok((Box::new(mpi::Ranks::new(b)?), kind, fallback))
}

#[cfg(not(feature = "mpi"))]
fn open_rank(
    _: &Device,
    _: &Network,
    _: usize,
    _: Option<&GpuOptions>,
) -> Result<(Box<dyn Group + Send>, Kind, Option<Fallback>)> {
    Err(not_built())
}

/// The refusal of MPI by a build without the `mpi` feature.
pub fn not_built() -> Error {
    Error::setting(
        Setting::Distributed,
        "mpi",
        "needs a shadertrain built with MPI: cargo build --release --features mpi (Open MPI's libopenmpi-dev and libclang installed)",
    )
}

/// Refuses a distributed run whose ranks loaded different data (`what`:
/// training, validation); nothing to check in a single process.
pub fn check_same_data(data: &crate::data::Dataset, what: &str) -> Result<()> {
    #[cfg(feature = "mpi")]
    if mpi::active() {
        return mpi::check_same_data(data, what);
    }
    let _ = (data, what);
    Ok(())
}

/// Waits for every rank of a distributed run (a no-op in one process).
pub fn barrier() {
    #[cfg(feature = "mpi")]
    if mpi::active() {
        mpi::barrier();
    }
}

/// `(rank, size)` of this process in a distributed run, once it started.
pub fn rank() -> Option<(usize, usize)> {
    #[cfg(feature = "mpi")]
    return mpi::rank();
    #[cfg(not(feature = "mpi"))]
    None
}

/// The adapters `--devices all` opens, as indices into `adapters` (in
/// [`crate::gpu::list_adapters`]' order): every one that can run the
/// kernels, less software adapters when there is a hardware one (lavapipe is
/// far slower than any GPU and would hold every step back), and less a GL
/// adapter whose device another API also offers (one device, counted once).
pub fn all_devices(adapters: &[crate::gpu::AdapterSummary]) -> Vec<usize> {
    let usable = |a: &crate::gpu::AdapterSummary| a.compute;
    let hardware = adapters.iter().any(|a| usable(a) && a.device_type != "Cpu");
    (0..adapters.len())
        .filter(|&i| {
            let a = &adapters[i];
            let twin = a.backend == "Gl"
                && adapters
                    .iter()
                    .any(|b| usable(b) && b.backend != "Gl" && b.name == a.name);
            usable(a) && !(hardware && a.device_type == "Cpu") && !twin
        })
        .collect()
}

/// The devices `--devices` names: `all` ([`all_devices`]) or a comma list
/// of adapter indices or name parts and `cpu` (a CPU worker on `threads`);
/// a repeat opens another device on the same adapter.
pub fn parse_devices(list: &str, threads: usize) -> Result<Vec<Device>> {
    let bad = |why: &str| Error::setting(Setting::Devices, list, why);
    if list.trim() == "all" {
        let adapters = crate::gpu::list_adapters();
        let all = all_devices(&adapters);
        if all.is_empty() {
            return Err(bad(
                "found no GPU adapter that can run the kernels (see `shadertrain devices`)",
            ));
        }
        return Ok(all
            .into_iter()
            .map(|i| Device::Gpu {
                adapter: Some(i.to_string()),
            })
            .collect());
    }
    list.split(',')
        .map(|e| match e.trim() {
            "" => Err(bad(
                "has an empty entry; give indices or names separated by commas, or all",
            )),
            "cpu" => Ok(Device::Cpu { threads }),
            "all" => Err(bad("mixes all with other entries")),
            name => Ok(Device::Gpu {
                adapter: Some(name.to_string()),
            }),
        })
        .collect()
}

/// One loaded batch, shared with the workers: `x (rows, inputs)`, `y (rows, outputs)`.
#[derive(Clone)]
pub struct Batch {
    x: Arc<Vec<f32>>,
    y: Arc<Vec<f32>>,
    rows: usize,
    /// Counts the batches loaded, so a worker knows whether the shard it holds is this batch's.
    generation: u64,
}

impl Batch {
    /// Shard `k` of `p`: its rows of `x` and `y`.
    fn shard(&self, k: usize, p: usize) -> (&[f32], &[f32], usize) {
        let r = shard_bounds(self.rows, p, k);
        let (ni, no) = (self.x.len() / self.rows, self.y.len() / self.rows);
        (
            &self.x[r.start * ni..r.end * ni],
            &self.y[r.start * no..r.end * no],
            r.len(),
        )
    }
}

/// Which per-sample values a [`Job::Read`] reads.
#[derive(Clone, Copy, Debug)]
pub enum Layer {
    /// [`Backend::read_activations`] of a layer.
    Activations(usize),
    /// [`Backend::read_deltas`] of a layer.
    Deltas(usize),
}

/// What a [`Group`] asks of its workers. The first kind runs once per
/// backend; the per-shard kind (those holding a [`Batch`]) once per shard.
#[derive(Clone)]
pub enum Job {
    /// [`Backend::set_params`].
    SetParams(Arc<Params<f32>>),
    /// [`Backend::set_metric`].
    SetMetric(Metric),
    /// [`Backend::set_optimizer`].
    SetOptimizer(Optimizer),
    /// [`Backend::set_optimizer_state`].
    SetOptimizerState(u64, Arc<Vec<f32>>),
    /// [`Backend::set_dropout_seed`].
    SetDropoutSeed(u64),
    /// [`Backend::params`].
    Params,
    /// [`Backend::optimizer_state`].
    OptimizerState,
    /// [`Backend::sync`].
    Sync,
    /// [`Backend::set_gradients`] with the combined gradient, then [`Backend::update`].
    Update(Arc<Params<f32>>, f32),
    /// Per shard: load it and forward; replies with its totals.
    Forward(Batch),
    /// Per shard: backward (after a forward of it); replies with its gradients.
    Backward(Batch),
    /// Per shard: load it and run a training pass ([`Backend::train_pass`]:
    /// dropout keyed on the shard's rows in the whole batch); replies with
    /// totals and gradients.
    Step(Batch),
    /// Per shard: its rows of a layer's activations or deltas.
    Read(Batch, Layer),
}

impl Job {
    /// Whether it runs once per shard.
    pub fn per_shard(&self) -> bool {
        matches!(
            self,
            Job::Forward(_) | Job::Backward(_) | Job::Step(_) | Job::Read(..)
        )
    }
}

/// A worker's answer to a [`Job`].
pub enum Reply {
    /// Done; nothing to return.
    Done,
    /// [`Job::Params`].
    Params(Params<f32>),
    /// [`Job::OptimizerState`].
    State(u64, Vec<f32>),
    /// A shard's totals and, after a backward, its gradients (`None` for an empty shard).
    Shard(Totals, Option<Params<f32>>),
    /// [`Job::Read`]: the shard's rows.
    Floats(Vec<f32>),
}

/// P workers and how their results meet. The local groups ([`Threads`],
/// [`MicroBatches`]) hold every shard's result; a distributed one holds its
/// own and overrides the collectives.
pub trait Group {
    /// P, the shards a batch is cut into.
    fn shards(&self) -> usize;

    /// The workers' devices, one line.
    fn describe(&self) -> String;

    /// Runs `job`: one reply per backend here, or for a per-shard job one
    /// per shard held here, in shard order.
    fn run(&mut self, job: Job) -> Result<Vec<Reply>>;

    /// The shards that `run`'s per-shard replies belong to.
    fn local_shards(&self) -> Range<usize> {
        0..self.shards()
    }

    /// Every shard's totals, in shard order, from the local ones.
    fn all_totals(&mut self, local: Vec<Totals>) -> Result<Vec<Totals>> {
        Ok(local)
    }

    /// The gradient of the whole batch of `rows` from the local shards'
    /// (`None`: an empty shard), by [`combine_gradients`].
    fn sum_gradients(
        &mut self,
        net: &Network,
        local: Vec<Option<Params<f32>>>,
        rows: usize,
    ) -> Result<Params<f32>> {
        let p = self.shards();
        let parts: Vec<(&[f32], usize)> = local
            .iter()
            .enumerate()
            .filter_map(|(k, g)| {
                Some((g.as_ref()?.data.as_slice(), shard_bounds(rows, p, k).len()))
            })
            .collect();
        let mut out = Params::zeros(net);
        combine_gradients(&parts, rows, &mut out.data);
        Ok(out)
    }

    /// Every shard's rows concatenated in shard order, from the local ones.
    fn gather(&mut self, local: Vec<Vec<f32>>) -> Result<Vec<f32>> {
        Ok(local.concat())
    }

    /// The root's copy of `bytes` on every worker (a distributed group's
    /// rank 0 broadcasts it; locally there is one copy already).
    fn broadcast(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(bytes)
    }

    /// The kernels the workers run (one plan for all), if on a GPU.
    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        None
    }
}

/// How far a [`Worker`] has taken the shard its backend holds.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Staged {
    generation: u64,
    shard: usize,
    backward: bool,
}

/// One backend serving shards: a thread's device, or the one device that
/// runs every shard as a micro-batch. After every forward it takes the
/// backend's totals, so they are counted per shard.
pub struct Worker {
    backend: WorkerBackend,
    staged: Option<Staged>,
}

impl Worker {
    /// A worker on `backend`.
    pub fn new(backend: WorkerBackend) -> Worker {
        Worker {
            backend,
            staged: None,
        }
    }

    /// Its backend's description.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Its backend's kernels ([`Backend::kernels`]).
    pub fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        self.backend.kernels()
    }

    /// A job that runs once per backend.
    pub fn run(&mut self, job: &Job) -> Result<Reply> {
        let b = &mut self.backend;
        match job {
            Job::SetParams(p) => b.set_params(p)?,
            Job::SetMetric(m) => b.set_metric(*m)?,
            Job::SetOptimizer(o) => b.set_optimizer(o)?,
            Job::SetOptimizerState(t, s) => b.set_optimizer_state(*t, s)?,
            Job::SetDropoutSeed(seed) => b.set_dropout_seed(*seed)?,
            Job::Params => return Ok(Reply::Params(b.params()?)),
            Job::OptimizerState => {
                let (t, s) = b.optimizer_state()?;
                return Ok(Reply::State(t, s));
            }
            Job::Sync => b.sync()?,
            Job::Update(g, lr) => {
                b.set_gradients(g)?;
                b.update(*lr)?;
                // A worker serving several shards holds only the last one's
                // activations; every worker reads a shard's afresh after an
                // update, so all groups return the same (the new parameters').
                self.staged = None;
            }
            Job::Forward(_) | Job::Backward(_) | Job::Step(_) | Job::Read(..) => {
                return Err(Error::Invalid("a per-shard job needs its shard".into()))
            }
        }
        Ok(Reply::Done)
    }

    /// A per-shard job on shard `k` of `p`; an empty shard computes nothing.
    pub fn run_shard(&mut self, job: &Job, k: usize, p: usize) -> Result<Reply> {
        let batch = match job {
            Job::Forward(b) | Job::Backward(b) | Job::Step(b) | Job::Read(b, _) => b,
            other => return self.run(other),
        };
        if batch.shard(k, p).2 == 0 {
            return Ok(match job {
                Job::Read(..) => Reply::Floats(Vec::new()),
                _ => Reply::Shard(Totals::default(), None),
            });
        }
        let here = Staged {
            generation: batch.generation,
            shard: k,
            backward: false,
        };
        match job {
            Job::Forward(_) => {
                let totals = self.forward(batch, here, k, p)?;
                Ok(Reply::Shard(totals, None))
            }
            Job::Step(_) => {
                self.staged = None;
                let (x, y, _) = batch.shard(k, p);
                self.backend.load_batch(x, y)?;
                self.backend
                    .train_pass(shard_bounds(batch.rows, p, k).start)?;
                let totals = self.backend.take_totals()?;
                self.staged = Some(Staged {
                    backward: true,
                    ..here
                });
                Ok(Reply::Shard(totals, Some(self.backend.read_gradients()?)))
            }
            Job::Backward(_) => {
                self.ensure(batch, here, k, p)?;
                Ok(Reply::Shard(Totals::default(), Some(self.backward()?)))
            }
            Job::Read(_, layer) => {
                self.ensure(batch, here, k, p)?;
                Ok(Reply::Floats(match *layer {
                    Layer::Activations(l) => self.backend.read_activations(l)?,
                    Layer::Deltas(l) => {
                        if !self.staged.is_some_and(|s| s.backward) {
                            self.backward()?;
                        }
                        self.backend.read_deltas(l)?
                    }
                }))
            }
            _ => unreachable!("matched above"),
        }
    }

    /// Load shard `k` and forward it; its totals.
    fn forward(&mut self, batch: &Batch, here: Staged, k: usize, p: usize) -> Result<Totals> {
        self.staged = None;
        let (x, y, _) = batch.shard(k, p);
        self.backend.load_batch(x, y)?;
        self.backend.forward()?;
        let t = self.backend.take_totals()?;
        self.staged = Some(here);
        Ok(t)
    }

    /// Forwards shard `k` again unless it is the one staged (a worker that
    /// serves several shards); the repeated forward's totals are not counted.
    fn ensure(&mut self, batch: &Batch, here: Staged, k: usize, p: usize) -> Result<()> {
        let held = self
            .staged
            .is_some_and(|s| s.generation == here.generation && s.shard == here.shard);
        if !held {
            self.forward(batch, here, k, p)?;
        }
        Ok(())
    }

    fn backward(&mut self) -> Result<Params<f32>> {
        self.backend.backward()?;
        if let Some(s) = &mut self.staged {
            s.backward = true;
        }
        self.backend.read_gradients()
    }
}

/// [`Backend`] over the P workers of a [`Group`]; see the module docs.
pub struct DataParallel {
    net: Network,
    capacity: usize,
    group: Box<dyn Group + Send>,
    batch: Option<Batch>,
    generation: u64,
    totals: Totals,
    /// The combined gradient of the last backward, or the one set.
    grads: Option<Params<f32>>,
    describe: String,
    /// Time spent combining the shards' totals and gradients (the reduction).
    reducing: std::time::Duration,
    /// The optimiser's clipping limit: every worker clips the same combined
    /// gradient, so the count of clipped updates is kept here, once.
    clip_norm: Option<f32>,
}

impl DataParallel {
    /// Batches of up to `capacity` rows on `group`'s workers, whose backends
    /// hold at least [`shard_capacity`]`(capacity, P)` rows each.
    pub fn new(
        net: &Network,
        capacity: usize,
        group: Box<dyn Group + Send>,
    ) -> Result<DataParallel> {
        if capacity == 0 {
            return Err(Error::setting(
                crate::error::Setting::Batch,
                0,
                "must be at least 1",
            ));
        }
        let describe = group.describe();
        Ok(DataParallel {
            clip_norm: None,
            net: net.clone(),
            capacity,
            group,
            batch: None,
            generation: 0,
            totals: Totals::default(),
            grads: None,
            describe,
            reducing: std::time::Duration::ZERO,
        })
    }

    /// `device` ([`Device::Parallel`], [`Device::MicroBatches`] or
    /// [`Device::Mpi`]) for batches of up to `capacity` rows, as the concrete
    /// type (to read [`DataParallel::take_reduction_seconds`]).
    pub fn open(device: &Device, net: &Network, capacity: usize) -> Result<DataParallel> {
        DataParallel::open_with(device, net, capacity, None)
    }

    /// As [`DataParallel::open`], GPU workers built with `gpu` (one plan
    /// for all, as [`crate::Trainer::on_with`] says).
    pub fn open_with(
        device: &Device,
        net: &Network,
        capacity: usize,
        gpu: Option<&GpuOptions>,
    ) -> Result<DataParallel> {
        DataParallel::new(net, capacity, group_for(device, net, capacity, gpu)?.0)
    }

    /// Seconds spent combining shards (totals and gradients: the host sum,
    /// or MPI's exchange and sum) since the last call; resets.
    pub fn take_reduction_seconds(&mut self) -> f64 {
        std::mem::take(&mut self.reducing).as_secs_f64()
    }

    /// P.
    pub fn shards(&self) -> usize {
        self.group.shards()
    }

    /// Every replica's parameters (those held here), to check they agree.
    pub fn replica_params(&mut self) -> Result<Vec<Params<f32>>> {
        self.group
            .run(Job::Params)?
            .into_iter()
            .map(|r| match r {
                Reply::Params(p) => Ok(p),
                _ => Err(unexpected("parameters")),
            })
            .collect()
    }

    fn need_batch(&self) -> Result<Batch> {
        self.batch
            .clone()
            .ok_or_else(|| Error::Invalid("no batch loaded".into()))
    }

    /// Runs a per-shard job; the shards' totals added in shard order and
    /// their gradients, if any.
    fn shards_run(&mut self, job: Job) -> Result<Option<Vec<Option<Params<f32>>>>> {
        let replies = self.group.run(job)?;
        let mut totals = Vec::with_capacity(replies.len());
        let mut grads = Vec::with_capacity(replies.len());
        for r in replies {
            match r {
                Reply::Shard(t, g) => {
                    totals.push(t);
                    grads.push(g);
                }
                _ => return Err(unexpected("a shard's totals")),
            }
        }
        let t0 = std::time::Instant::now();
        let all = self.group.all_totals(totals)?;
        sum_totals(all, &mut self.totals);
        self.reducing += t0.elapsed();
        Ok(grads.iter().any(Option::is_some).then_some(grads))
    }

    fn combine(&mut self, grads: Option<Vec<Option<Params<f32>>>>, rows: usize) -> Result<()> {
        let n = self.group.local_shards().len();
        let local = grads.unwrap_or_else(|| vec![None; n]);
        let t0 = std::time::Instant::now();
        self.grads = Some(self.group.sum_gradients(&self.net, local, rows)?);
        self.reducing += t0.elapsed();
        Ok(())
    }

    /// `job` on every backend, for its effect.
    fn all(&mut self, job: Job) -> Result<()> {
        self.group.run(job).map(drop)
    }

    fn first(&mut self, job: Job) -> Result<Reply> {
        self.group
            .run(job)?
            .into_iter()
            .next()
            .ok_or_else(|| unexpected("a reply"))
    }
}

/// Floats as little-endian bytes.
fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// Little-endian f32s from bytes (a whole number of them).
fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn unexpected(what: &str) -> Error {
    Error::Invalid(format!("a worker did not reply with {what}"))
}

impl Backend for DataParallel {
    type Scalar = f32;

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        // The workers take passes and updates, never a whole step.
        let k = self.group.kernels()?;
        Some(crate::gpu::KernelReport {
            whole_step: false,
            ..k
        })
    }

    /// The root's parameters, on every worker.
    fn set_params(&mut self, p: &Params<f32>) -> Result<()> {
        crate::backend::check_params(&self.net, p)?;
        let bytes = self.group.broadcast(le_bytes(&p.data))?;
        let p = Params::from_vec(&self.net, floats(&bytes))?;
        self.all(Job::SetParams(Arc::new(p)))
    }

    /// Worker 0's, after checking that every replica here holds the same
    /// bits (they apply the same updates, so a difference is a fault).
    fn params(&mut self) -> Result<Params<f32>> {
        let mut all = self.replica_params()?.into_iter();
        let first = all.next().ok_or_else(|| unexpected("parameters"))?;
        for (k, other) in all.enumerate() {
            let same = |a: &f32, b: &f32| a.to_bits() == b.to_bits();
            if let Some(i) = (first.data.iter().zip(&other.data)).position(|(a, b)| !same(a, b)) {
                return Err(Error::Invalid(format!(
                    "the replicas diverged: worker {} holds {} at parameter {i}, worker 0 {}",
                    k + 1,
                    other.data[i],
                    first.data[i]
                )));
            }
        }
        Ok(first)
    }

    fn set_metric(&mut self, metric: Metric) -> Result<()> {
        self.all(Job::SetMetric(metric))
    }

    fn load_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        // Reuses the buffers once the workers have let go of the last batch.
        let (mut bx, mut by) = match self.batch.take() {
            Some(b) => (b.x, b.y),
            None => Default::default(),
        };
        let fill = |a: &mut Arc<Vec<f32>>, v: &[f32]| match Arc::get_mut(a) {
            Some(buf) => {
                buf.clear();
                buf.extend_from_slice(v);
            }
            None => *a = Arc::new(v.to_vec()),
        };
        fill(&mut bx, x);
        fill(&mut by, y);
        self.generation += 1;
        self.batch = Some(Batch {
            x: bx,
            y: by,
            rows,
            generation: self.generation,
        });
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        let b = self.need_batch()?;
        self.shards_run(Job::Forward(b)).map(drop)
    }

    fn backward(&mut self) -> Result<()> {
        let b = self.need_batch()?;
        let rows = b.rows;
        let grads = self.shards_run(Job::Backward(b))?;
        self.combine(grads, rows)
    }

    /// The combined gradient on every worker, then each one's update.
    fn update(&mut self, lr: f32) -> Result<()> {
        let g = self.grads.clone().ok_or_else(|| {
            Error::Invalid("no gradients to update from: run backward first".into())
        })?;
        if let Some(c) = self.clip_norm {
            // The CPU twin's rule on the gradient every worker receives. A GPU
            // worker sums the norm in another order, so at a norm within
            // rounding of the limit its decision may differ from this count.
            let norm = crate::cpu::grad_norm(&g.data);
            if crate::optim::clip_scale(norm, c) < 1.0 {
                self.totals.clipped += 1;
            }
        }
        self.all(Job::Update(Arc::new(g), lr))
    }

    /// One round per step: every shard's forward and backward at once.
    fn step(&mut self, lr: f32) -> Result<()> {
        let b = self.need_batch()?;
        let rows = b.rows;
        let grads = self.shards_run(Job::Step(b))?;
        self.combine(grads, rows)?;
        self.update(lr)
    }

    fn set_gradients(&mut self, g: &Params<f32>) -> Result<()> {
        crate::backend::check_params(&self.net, g)?;
        self.grads = Some(g.clone());
        Ok(())
    }

    /// Every worker's; each keys a shard's masks on its rows in the whole
    /// batch, so P workers drop the units one device drops.
    fn set_dropout_seed(&mut self, seed: u64) -> Result<()> {
        self.all(Job::SetDropoutSeed(seed))
    }

    fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
        opt.validate()?;
        self.clip_norm = opt.clip_norm;
        self.all(Job::SetOptimizer(*opt))
    }

    fn optimizer_state(&mut self) -> Result<(u64, Vec<f32>)> {
        match self.first(Job::OptimizerState)? {
            Reply::State(t, s) => Ok((t, s)),
            _ => Err(unexpected("the optimizer's state")),
        }
    }

    /// The root's state, on every worker.
    fn set_optimizer_state(&mut self, t: u64, state: &[f32]) -> Result<()> {
        // t (8 bytes) travels in front of the state.
        let mut bytes = t.to_le_bytes().to_vec();
        bytes.extend(le_bytes(state));
        let bytes = self.group.broadcast(bytes)?;
        let (t, state) = bytes.split_at(8.min(bytes.len()));
        let t = u64::from_le_bytes(t.try_into().map_err(|_| unexpected("the state"))?);
        self.all(Job::SetOptimizerState(t, Arc::new(floats(state))))
    }

    fn sync(&mut self) -> Result<()> {
        self.all(Job::Sync)
    }

    fn take_totals(&mut self) -> Result<Totals> {
        let t = self.peek_totals()?;
        self.totals = Totals::default();
        Ok(t)
    }

    fn peek_totals(&mut self) -> Result<Totals> {
        Ok(Totals {
            loss_fn: self.net.loss(),
            ..self.totals
        })
    }

    /// Every shard's rows in row order; after an update, those of the new
    /// parameters (each shard is forwarded again, its loss not counted).
    fn read_activations(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 0)?;
        self.read(Layer::Activations(l))
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 1)?;
        self.read(Layer::Deltas(l))
    }

    fn read_gradients(&mut self) -> Result<Params<f32>> {
        Ok(self
            .grads
            .clone()
            .unwrap_or_else(|| Params::zeros(&self.net)))
    }
}

impl DataParallel {
    fn read(&mut self, layer: Layer) -> Result<Vec<f32>> {
        let b = self.need_batch()?;
        let local = self
            .group
            .run(Job::Read(b, layer))?
            .into_iter()
            .map(|r| match r {
                Reply::Floats(v) => Ok(v),
                _ => Err(unexpected("a shard's rows")),
            })
            .collect::<Result<Vec<_>>>()?;
        self.group.gather(local)
    }
}
