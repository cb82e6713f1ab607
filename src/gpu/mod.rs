//! The GPU backend: wgpu device and adapter choice ([`context`]), the WGSL
//! kernels and their layouts ([`kernels`]), tiled product cores generated per
//! configuration ([`codegen`]), how a backend is built
//! ([`options`]), its persistent buffers and bind groups (`buffers.rs`), what
//! a training step dispatches (`schedule.rs`: read it to know what runs),
//! [`GpuBackend`] itself, which records a whole step into one submission
//! ([`backend`]), read-backs ([`readback`]), and what a backend reports
//! about its kernels ([`report`]); a tiny network's step in one dispatch
//! ([`whole_step`]). The one-kernel runner for the tests (`runner`) and the
//! uniform structs are public for tests and benches but not documented API.

pub mod backend;
mod buffers;
#[doc(hidden)]
pub mod clip;
pub mod codegen;
pub mod context;
#[doc(hidden)]
pub mod dropout;
pub mod kernels;
pub mod layout;
pub mod options;
pub mod pipeline_cache;
pub mod plan;
pub mod readback;
pub mod report;
#[doc(hidden)]
pub mod runner;
mod schedule;
pub mod tune;
pub mod whole_step;

pub use backend::GpuBackend;
pub use context::{list_adapters, AdapterSummary, GpuContext};
#[doc(hidden)]
pub use kernels::{Acc, BatchUniform, Dims, OptimUniform, StepUniform};
pub use kernels::{Core, KernelConfig, TileConfig};
pub use options::{heuristic, micro_batch_rows, GpuOptions, KernelSet};
pub use plan::{KernelPlan, Product, Source};
pub use report::KernelReport;
#[doc(hidden)]
pub use runner::KernelRunner;
pub use tune::TuneMode;
