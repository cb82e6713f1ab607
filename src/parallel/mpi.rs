//! MPI ranks as the workers of a [`DataParallel`](super::DataParallel) (the `mpi` feature): one
//! rank per GPU, or per CPU backend, each the worker of its own shard.
//!
//! Every rank loads the whole data set and stages every batch (the shuffle
//! depends only on the seed), then computes its shard: the memory a rank
//! needs is the data set plus one backend sized for a shard. The shards'
//! gradients meet in an ordered reduction: `all_to_all` hands rank `j`
//! segment `j` of every rank's gradient, rank `j` sums its segment in rank
//! order ([`combine_gradients`], the same arithmetic as the threads), and
//! `all_gather` gives every rank the whole sum. `MPI_Allreduce` is not used:
//! its order depends on the implementation's algorithm choice, so results
//! would differ from the single-device reference. Totals are gathered and
//! summed in rank order; rank 0's parameters and optimiser state are
//! broadcast whenever they are set (initial weights, a resumed checkpoint).
//!
//! A rank whose step fails says so in a status exchange before the data
//! moves, so every rank ends with an error instead of waiting; a rank that
//! dies outright is noticed by the launcher (`mpirun`, `srun`), which ends
//! the job.

use super::{combine_gradients, shard_bounds, Group, Job, Reply, Worker, WorkerBackend};
use crate::backend::Totals;
use crate::checkpoint::DataFingerprint;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::gpu::plan::{products, Choice, KernelPlan, Source};
use crate::gpu::GpuOptions;
use crate::network::{Network, Params};
use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The MPI environment, from [`init`] to [`finalize`].
static UNIVERSE: Mutex<Option<mpi::environment::Universe>> = Mutex::new(None);

/// The start of the message a rank gives when another rank failed: that
/// rank prints the cause, so the command line stays quiet about this one.
pub const PEER_FAILED: &str = "stopped because another rank failed";

/// The interrupt flag of this rank (set by its signal handler) and the flag
/// all ranks agree on ([`agree_on_stop`]).
type StopFlags = (Arc<AtomicBool>, Arc<AtomicBool>);
static STOP: Mutex<Option<StopFlags>> = Mutex::new(None);

/// A stop flag every rank sees set after the same step: `local` (this
/// rank's interrupt) travels with each step's status exchange, and the
/// returned flag is set on every rank once any rank's `local` was. Give it
/// to [`crate::Trainer::stop_when`], so that an interrupted job stops all
/// its ranks at one step and rank 0 writes that step's checkpoint, instead
/// of one rank waiting for another that already stopped.
pub fn agree_on_stop(local: Arc<AtomicBool>) -> Arc<AtomicBool> {
    let agreed = Arc::new(AtomicBool::new(false));
    if let Ok(mut s) = STOP.lock() {
        *s = Some((local, agreed.clone()));
    }
    agreed
}

/// Starts MPI once for the process (serialized threading: only the
/// training thread calls it); `(rank, size)`.
pub fn init() -> Result<(usize, usize)> {
    let mut u = UNIVERSE
        .lock()
        .map_err(|_| Error::Invalid("MPI state poisoned".into()))?;
    if u.is_none() {
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| Error::Invalid("MPI could not be initialised".into()))?;
        *u = Some(universe);
    }
    let w = SimpleCommunicator::world();
    Ok((w.rank() as usize, w.size() as usize))
}

/// Whether [`init`] ran (and [`finalize`] not yet).
pub fn active() -> bool {
    UNIVERSE.lock().is_ok_and(|u| u.is_some())
}

/// `(rank, size)` once [`init`] ran.
pub fn rank() -> Option<(usize, usize)> {
    active().then(|| {
        let w = SimpleCommunicator::world();
        (w.rank() as usize, w.size() as usize)
    })
}

/// Ends MPI (`MPI_Finalize`, after a barrier); call once before exiting.
pub fn finalize() {
    if let Ok(mut u) = UNIVERSE.lock() {
        if u.is_some() {
            SimpleCommunicator::world().barrier();
        }
        // Dropping the universe finalises MPI.
        u.take();
    }
}

/// Waits until every rank arrives here.
pub fn barrier() {
    SimpleCommunicator::world().barrier();
}

/// Ends every rank of the job at once (`MPI_Abort`) with `code`.
pub fn abort(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

/// Refuses a run whose ranks loaded different data (another file, another
/// split or normalisation on some host): every rank compares its data's
/// fingerprint ([`DataFingerprint`]) and row count with rank 0's.
pub fn check_same_data(data: &Dataset, what: &str) -> Result<()> {
    let w = SimpleCommunicator::world();
    let f = DataFingerprint::of(data);
    let mine = [f.inputs, f.targets, data.len() as u64];
    let mut all = vec![0u64; 3 * w.size() as usize];
    w.all_gather_into(&mine[..], &mut all[..]);
    let root = &all[..3];
    for (r, other) in all.chunks(3).enumerate().skip(1) {
        if other != root {
            return Err(Error::Data {
                path: data.name.clone(),
                msg: format!(
                    "the ranks disagree about the {what} data: rank {r} has {} rows (fingerprint {:016x}/{:016x}), rank 0 {} rows ({:016x}/{:016x}); every rank must load the same data",
                    other[2], other[0], other[1], root[2], root[0], root[1]
                ),
            });
        }
    }
    Ok(())
}

/// The ranks of `MPI_COMM_WORLD`, this one the worker of shard `rank`.
pub struct Ranks {
    worker: Worker,
    rank: usize,
    size: usize,
    describe: String,
}

// The communicator is made afresh for every call (`SimpleCommunicator::world`),
// so nothing here is tied to a thread; MPI runs with serialized threading.
impl Ranks {
    /// This rank's worker on `backend`; [`init`] must have run.
    pub fn new(backend: WorkerBackend) -> Result<Ranks> {
        let (rank, size) = rank().ok_or_else(|| Error::Invalid("MPI is not initialised".into()))?;
        let host = mpi::environment::processor_name().unwrap_or_default();
        let describe = format!(
            "{size} MPI rank{}; rank {rank} on {host}: {}",
            if size == 1 { "" } else { "s" },
            backend.describe()
        );
        Ok(Ranks {
            worker: Worker::new(backend),
            rank,
            size,
            describe,
        })
    }

    fn world(&self) -> SimpleCommunicator {
        SimpleCommunicator::world()
    }

    /// Every rank learns whether every rank succeeded; an error names the
    /// rank: this one's cause, or which other rank failed.
    /// The exchange also carries each rank's interrupt ([`agree_on_stop`]).
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        let stop = STOP.lock().ok().and_then(|s| s.clone());
        let interrupted = stop.as_ref().is_some_and(|(l, _)| l.load(Ordering::SeqCst));
        let status = [u8::from(local.is_ok()) | u8::from(interrupted) << 1];
        let mut all = vec![0u8; self.size];
        self.world().all_gather_into(&status[..], &mut all[..]);
        if let Some((_, agreed)) = &stop {
            if all.iter().any(|s| s & 2 != 0) {
                agreed.store(true, Ordering::SeqCst);
            }
        }
        let who = |r: usize| format!("rank {r} of {}", self.size);
        match local {
            Err(e) => Err(Error::Worker {
                worker: who(self.rank),
                source: Box::new(e),
            }),
            Ok(v) => match all.iter().position(|&s| s & 1 == 0) {
                Some(r) => Err(Error::Worker {
                    worker: who(r),
                    source: Box::new(Error::Invalid(PEER_FAILED.into())),
                }),
                None => Ok(v),
            },
        }
    }
}

impl Group for Ranks {
    fn shards(&self) -> usize {
        self.size
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// Reads of this rank's replica (parameters, optimiser state, a sync)
    /// stay local: only rank 0 writes checkpoints. Every other job is one
    /// that all ranks run together, so they agree on its success.
    fn run(&mut self, job: Job) -> Result<Vec<Reply>> {
        let local = self.worker.run_shard(&job, self.rank, self.size);
        if matches!(job, Job::Params | Job::OptimizerState | Job::Sync) {
            return local.map(|r| vec![r]);
        }
        Ok(vec![self.agree(local)?])
    }

    fn local_shards(&self) -> Range<usize> {
        self.rank..self.rank + 1
    }

    fn all_totals(&mut self, local: Vec<Totals>) -> Result<Vec<Totals>> {
        let t = local.first().copied().unwrap_or_default();
        let mine = [t.loss_sum.to_bits(), t.samples, t.correct];
        let mut all = vec![0u64; 3 * self.size];
        self.world().all_gather_into(&mine[..], &mut all[..]);
        Ok(all
            .chunks(3)
            .map(|c| Totals {
                loss_sum: f64::from_bits(c[0]),
                loss_fn: t.loss_fn,
                samples: c[1],
                correct: c[2],
                // Clipped updates are counted once, by DataParallel::update.
                clipped: 0,
            })
            .collect())
    }

    /// The ordered reduction (module docs): segment `rank` of every rank's
    /// gradient summed here in rank order, then gathered.
    fn sum_gradients(
        &mut self,
        net: &Network,
        local: Vec<Option<Params<f32>>>,
        rows: usize,
    ) -> Result<Params<f32>> {
        let (p, len) = (self.size, net.param_count());
        let seg = len.div_ceil(p);
        // (p, seg): this rank's gradient, zero-padded; an empty shard sends zeros it is not counted for.
        let mut send = vec![0f32; seg * p];
        if let Some(Some(g)) = local.first() {
            send[..len].copy_from_slice(&g.data);
        }
        // (p, seg): segment `rank` of each rank's gradient, rank order.
        let mut recv = vec![0f32; seg * p];
        self.world().all_to_all_into(&send[..], &mut recv[..]);
        let parts: Vec<(&[f32], usize)> = (0..p)
            .map(|k| {
                (
                    &recv[k * seg..(k + 1) * seg],
                    shard_bounds(rows, p, k).len(),
                )
            })
            .collect();
        let mut mine = vec![0f32; seg];
        combine_gradients(&parts, rows, &mut mine);
        let mut all = vec![0f32; seg * p];
        self.world().all_gather_into(&mine[..], &mut all[..]);
        all.truncate(len);
        Params::from_vec(net, all)
    }

    fn gather(&mut self, local: Vec<Vec<f32>>) -> Result<Vec<f32>> {
        let mine = local.concat();
        let w = self.world();
        let count = [mine.len() as i32];
        let mut counts = vec![0i32; self.size];
        w.all_gather_into(&count[..], &mut counts[..]);
        let displs: Vec<i32> = counts
            .iter()
            .scan(0i32, |at, &c| {
                let d = *at;
                *at += c;
                Some(d)
            })
            .collect();
        let total = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![0f32; total];
        let mut part = PartitionMut::new(&mut all[..], counts, &displs[..]);
        w.all_gather_varcount_into(&mine[..], &mut part);
        Ok(all)
    }

    fn broadcast(&mut self, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(broadcast(bytes))
    }

    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        self.worker.kernels()
    }
}

/// Rank 0's `bytes` on every rank (the others' are replaced).
fn broadcast(bytes: Vec<u8>) -> Vec<u8> {
    let w = SimpleCommunicator::world();
    let root = w.process_at_rank(0);
    let mut len = [bytes.len() as u64];
    root.broadcast_into(&mut len[..]);
    let mut buf = bytes;
    buf.resize(len[0] as usize, 0);
    root.broadcast_into(&mut buf[..]);
    buf
}

/// The GPU options every rank builds its backend with: rank 0 resolves
/// the plan on its adapter from `gpu` (else the defaults: a given plan, the
/// cache, `--tune auto`'s measurements, the heuristic) and broadcasts its
/// text and sources; every rank runs it, so each shard's products round as
/// on one device (as [`super::Threads`]' workers do). A rank 0 without a
/// plan (on the CPU, or the simple kernels) leaves every rank `gpu`; a rank
/// 0 that fails to resolve one fails every rank. Every rank calls it.
pub fn agree_on_plan(
    resolved: &crate::trainer::Resolved,
    net: &Network,
    rows: usize,
    gpu: Option<&GpuOptions>,
) -> Result<Option<GpuOptions>> {
    let root = SimpleCommunicator::world().rank() == 0;
    // Rank 0's message: "none", "error", or "plan\n<plan>\n<source per product>".
    let mine = match resolved {
        crate::trainer::Resolved::Gpu(ctx) if root => gpu
            .cloned()
            .unwrap_or_default()
            .resolved(ctx, net, rows)
            .map(Some),
        _ => Ok(None),
    };
    let message = match &mine {
        Err(_) => "error".to_string(),
        Ok(Some(GpuOptions {
            plan: Some(plan), ..
        })) => {
            let sources: Vec<&str> = plan
                .entries(net)
                .iter()
                .map(|(_, c)| c.source.name())
                .collect();
            format!("plan\n{plan}\n{}", sources.join(" "))
        }
        Ok(_) => "none".to_string(),
    };
    let got = String::from_utf8(broadcast(message.into_bytes()))
        .map_err(|_| Error::Invalid("rank 0 sent a kernel plan that is not text".into()))?;
    if root {
        return mine.map(|o| o.or_else(|| gpu.cloned()));
    }
    let mut lines = got.lines();
    match lines.next() {
        Some("plan") => {
            let text = lines.next().unwrap_or_default();
            let mut plan = KernelPlan::parse(net, text, Source::Given)?;
            let names: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
            for (i, p) in products(net).into_iter().enumerate() {
                let source = [
                    Source::Tuned,
                    Source::Cache,
                    Source::Heuristic,
                    Source::Given,
                ]
                .into_iter()
                .find(|s| names.get(i) == Some(&s.name()))
                .unwrap_or(Source::Given);
                let config = plan.get(p).config;
                plan.set(p, Choice { config, source });
            }
            Ok(Some(gpu.cloned().unwrap_or_default().with_plan(plan)))
        }
        Some("error") => Err(Error::Worker {
            worker: format!("rank 0 of {}", SimpleCommunicator::world().size()),
            source: Box::new(Error::Invalid(PEER_FAILED.into())),
        }),
        _ => Ok(gpu.cloned()),
    }
}
