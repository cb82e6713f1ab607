//! shadertrain: fully-connected networks trained by WGSL compute shaders on any
//! GPU that wgpu reaches, with a CPU reference that every GPU result is
//! checked against.
//!
//! ```
//! use shadertrain::{backend::Backend, cpu::CpuBackend, network::Network};
//! let net = Network::parse("2,2,2").unwrap();
//! let mut cpu = CpuBackend::<f64>::new(&net, 1).unwrap();
//! cpu.set_params(&net.init(7)).unwrap();
//! cpu.load_batch(&[0.05, 0.10], &[0.01, 0.99]).unwrap();
//! cpu.step(0.5).unwrap();
//! assert!(cpu.take_totals().unwrap().loss() > 0.0);
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod error;
pub mod example;
pub mod fsutil;
pub mod gpu;
pub mod idx;
pub mod memory;
pub mod network;
pub mod optim;
pub mod plot;
pub mod train;
pub mod trainer;

pub use error::{Error, Result};
pub use trainer::Trainer;
