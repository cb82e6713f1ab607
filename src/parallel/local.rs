//! The groups of one process: [`Threads`], P workers each on its own thread
//! with its own backend (a GPU device from its own wgpu instance, or a CPU
//! backend), and [`MicroBatches`], one backend running the P shards in turn,
//! the reference the others equal bit for bit.

use super::{Group, Job, Reply, Worker, WorkerBackend};
use crate::error::{Error, Result};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

/// One backend that runs each of P shards as a micro-batch, in shard order.
pub struct MicroBatches {
    parts: usize,
    worker: Worker,
}

impl MicroBatches {
    /// `parts` shards on `backend`, which holds the largest of them.
    pub fn new(parts: usize, backend: WorkerBackend) -> MicroBatches {
        MicroBatches {
            parts: parts.max(1),
            worker: Worker::new(backend),
        }
    }
}

impl Group for MicroBatches {
    fn shards(&self) -> usize {
        self.parts
    }

    fn describe(&self) -> String {
        format!("{} in {} micro-batches", self.worker.describe(), self.parts)
    }

    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        self.worker.kernels()
    }

    fn run(&mut self, job: Job) -> Result<Vec<Reply>> {
        if !job.per_shard() {
            return Ok(vec![self.worker.run(&job)?]);
        }
        (0..self.parts)
            .map(|k| self.worker.run_shard(&job, k, self.parts))
            .collect()
    }
}

/// A worker thread: its job queue, its replies, and who it is for messages.
struct Handle {
    jobs: Option<Sender<Job>>,
    replies: Receiver<Result<Reply>>,
    thread: Option<JoinHandle<()>>,
    who: String,
}

/// P workers, one thread and one backend each; worker `k` takes shard `k`.
/// A job goes to every worker before any reply is awaited, so they run at
/// once; replies are read in shard order.
pub struct Threads {
    workers: Vec<Handle>,
    describe: String,
    /// The kernels every worker runs (they are refused unless they agree).
    kernels: Option<crate::gpu::KernelReport>,
}

impl Threads {
    /// `p` workers, worker `k`'s backend made by `open(k)` on this thread
    /// (so a device that cannot be opened is an error here), then moved to
    /// its own. GPU workers must run one kernel plan
    /// ([`crate::backend::Backend::kernel_config`]): a shard's gradient
    /// then rounds as on one device, and the run equals
    /// [`MicroBatches`](super::MicroBatches) bit for bit.
    pub fn open(p: usize, mut open: impl FnMut(usize) -> Result<WorkerBackend>) -> Result<Threads> {
        let mut workers = Vec::with_capacity(p);
        let mut names = Vec::with_capacity(p);
        let mut kernels = None;
        for k in 0..p.max(1) {
            let backend = open(k).map_err(|e| worker_error(k, "", e))?;
            let desc = backend.describe();
            let mine = backend.kernels();
            if k == 0 {
                kernels = mine.clone();
            }
            let (a, b) = (kernels.as_ref(), mine.as_ref());
            if a.map(|r| &r.kernel_config) != b.map(|r| &r.kernel_config) {
                let plan = |r: Option<&crate::gpu::KernelReport>| {
                    r.map_or("no tiled kernels".into(), |r| r.kernel_config.clone())
                };
                return Err(worker_error(
                    k,
                    &desc,
                    Error::Invalid(format!(
                        "runs the kernels {}, worker 0 {}: the workers of one run must run one kernel plan, or the shards' gradients round differently from one device's",
                        plan(b),
                        plan(a)
                    )),
                ));
            }
            let who = format!("worker {k} ({desc})");
            names.push(desc);
            workers.push(spawn(k, p, Worker::new(backend), who)?);
        }
        Ok(Threads {
            describe: describe_workers(&names),
            workers,
            kernels,
        })
    }
}

/// `P workers: a, b` with repeats counted: `3 workers: cpu (…) ×3`.
fn describe_workers(names: &[String]) -> String {
    let mut runs: Vec<(String, usize)> = Vec::new();
    for n in names {
        match runs.last_mut() {
            Some((last, c)) if last == n => *c += 1,
            _ => runs.push((n.clone(), 1)),
        }
    }
    let list: Vec<String> = runs
        .into_iter()
        .map(|(n, c)| if c > 1 { format!("{n} ×{c}") } else { n })
        .collect();
    let s = if names.len() == 1 { "" } else { "s" };
    format!(
        "{} data-parallel worker{s}: {}",
        names.len(),
        list.join(", ")
    )
}

/// Starts worker `k` of `p` on its own thread.
fn spawn(k: usize, p: usize, mut worker: Worker, who: String) -> Result<Handle> {
    let (jobs, inbox) = channel::<Job>();
    let (outbox, replies) = channel();
    let thread = std::thread::Builder::new()
        .name(format!("shadertrain-worker-{k}"))
        .spawn(move || {
            while let Ok(job) = inbox.recv() {
                // A panic ends this worker with an error, not the process.
                let run = std::panic::AssertUnwindSafe(|| worker.run_shard(&job, k, p));
                let reply = std::panic::catch_unwind(run).map_err(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown cause".into());
                    Error::Invalid(format!("panicked: {what}"))
                });
                let failed = !matches!(reply, Ok(Ok(_)));
                if outbox.send(reply.and_then(|r| r)).is_err() || failed {
                    break;
                }
            }
        })
        .map_err(|e| Error::Invalid(format!("cannot start worker thread {k}: {e}")))?;
    Ok(Handle {
        jobs: Some(jobs),
        replies,
        thread: Some(thread),
        who,
    })
}

/// `e` from worker `k`, named so the one line says which worker failed.
fn worker_error(k: usize, desc: &str, e: Error) -> Error {
    Error::Worker {
        worker: if desc.is_empty() {
            format!("worker {k}")
        } else {
            format!("worker {k} ({desc})")
        },
        source: Box::new(e),
    }
}

impl Group for Threads {
    fn shards(&self) -> usize {
        self.workers.len()
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        self.kernels.clone()
    }

    fn run(&mut self, job: Job) -> Result<Vec<Reply>> {
        // Every worker starts before any reply is awaited.
        let mut sent = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            sent.push(
                w.jobs
                    .as_ref()
                    .is_some_and(|tx| tx.send(job.clone()).is_ok()),
            );
        }
        drop(job);
        let mut replies = Vec::with_capacity(self.workers.len());
        let mut first_error = None;
        for (w, sent) in self.workers.iter_mut().zip(sent) {
            let reply = if sent {
                w.replies
                    .recv()
                    .unwrap_or_else(|_| Err(Error::Invalid("stopped (its thread ended)".into())))
            } else {
                Err(Error::Invalid("stopped after an earlier error".into()))
            };
            match reply {
                Ok(r) => replies.push(r),
                Err(e) => {
                    // A failed worker takes no more jobs: the replicas may differ now.
                    w.jobs = None;
                    first_error.get_or_insert_with(|| {
                        let who = w.who.clone();
                        Error::Worker {
                            worker: who,
                            source: Box::new(e),
                        }
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(replies),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        for w in &mut self.workers {
            // Closing the queue ends the thread's loop.
            w.jobs = None;
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}
