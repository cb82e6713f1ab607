//! shadertrain: fully-connected networks trained by WGSL compute shaders on any
//! GPU that wgpu reaches, with a CPU reference that every GPU result is
//! checked against.
//!
//! [`Trainer`] is the front door: the command line trains through it too.
//!
//! ```
//! use shadertrain::{Dataset, Network, Trainer};
//! # fn main() -> shadertrain::Result<()> {
//! let net = Network::parse("2,4,1")?;
//! let mut t = Trainer::cpu(&net, 4)?.epochs(2000).batch(4).lr(5.0);
//! t.fit(&Dataset::xor())?;
//! # Ok(())
//! # }
//! ```
//!
//! Below it, a [`Backend`] runs one step at a time, on the CPU reference
//! (generic over `f32`/`f64`), the fast CPU engine, or a GPU:
//!
//! ```
//! use shadertrain::{Backend, CpuBackend, Network};
//! let net = Network::parse("2,2,2").unwrap();
//! let mut cpu = CpuBackend::<f64>::new(&net, 1).unwrap();
//! cpu.set_params(&net.init(7)).unwrap();
//! cpu.load_batch(&[0.05, 0.10], &[0.01, 0.99]).unwrap();
//! cpu.step(0.5).unwrap();
//! assert!(cpu.take_totals().unwrap().loss() > 0.0);
//! ```

#![warn(missing_docs)]

pub mod backend;
/// Benchmark scaffolding shared by `shadertrain bench` and `cargo bench`.
#[doc(hidden)]
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod early_stop;
pub mod error;
pub mod example;
pub mod export;
pub mod fsutil;
pub mod gpu;
pub mod idx;
pub mod lr_find;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod npy;
pub mod optim;
pub mod parallel;
pub mod plot;
pub mod train;
pub mod trainer;
pub mod weights;

pub use backend::{Backend, Metric, Totals};
pub use checkpoint::Checkpoint;
pub use cpu::{CpuBackend, FastCpuBackend};
pub use data::{Builtin, Dataset, Source, Standardizer};
pub use early_stop::EarlyStop;
pub use error::{Error, Result, Setting};
pub use gpu::{GpuBackend, GpuContext};
pub use network::{Activation, Loss, Network, Params};
pub use optim::{Optimizer, OptimizerKind};
pub use train::{EpochStats, Progress, Schedule, TrainConfig};
pub use trainer::{Device, Trainer};
