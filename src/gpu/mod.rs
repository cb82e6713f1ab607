//! The GPU backend: wgpu device and adapter choice ([`context`]), the WGSL
//! kernels and their layouts ([`kernels`]), the trainer that encodes a whole
//! step into one submission ([`trainer`]), read-backs ([`readback`]) and a
//! one-kernel runner for the tests ([`runner`]).

pub mod context;
pub mod kernels;
pub mod readback;
pub mod runner;
pub mod trainer;

pub use context::{list_adapters, AdapterSummary, GpuContext};
pub use kernels::{Acc, Dims, OptimUniform, SgdUniform, TileConfig};
pub use runner::KernelRunner;
pub use trainer::{micro_batch_rows, GpuBackend, GpuOptions, KernelSet};
