//! The `shadertrain` command line: `train`, `eval`, `predict`, `export`,
//! `bench`, `example` and `devices`, one file each under `cli/`. This file
//! parses the arguments, dispatches, and prints the one error line of a failure
//! (`error: ...`, non-zero exit); the library's errors are worded here with
//! the flags' names.

/// `println!` to stdout for the commands' results; once stdout is closed
/// (`| head`), printing stops quietly and the command goes on to write its
/// files ([`cli::print_out`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` as [`outln!`] does `println!`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!($($arg)*))
    };
}

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "shadertrain",
    version,
    about = "Train MLPs with WGSL compute shaders on any GPU wgpu reaches, checked against a CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network (default: two interleaved spirals).
    Train(Box<cli::train::TrainArgs>),
    /// The learning-rate range test: a short exponential sweep of the rate
    /// from the initial weights (the train flags for data and network);
    /// prints a suggested --lr, draws loss against rate with --plot.
    LrFind(Box<cli::lr_find::LrFindArgs>),
    /// Time the training step on the CPU, the GPU or both, side by side.
    Bench(cli::bench::BenchArgs),
    /// Measure the GPU kernels' configurations for a network on this
    /// adapter and remember the fastest per product (train and bench use them).
    Tune(cli::tune::TuneArgs),
    /// Score a saved model on a dataset: loss, accuracy, confusion matrix.
    Eval(cli::model::ModelArgs),
    /// Write a saved model's outputs for every row of a dataset as CSV.
    Predict(cli::model::PredictArgs),
    /// Write a saved model for other tools: ONNX, or PyTorch weights and the code of its nn.Sequential.
    Export(cli::export::ExportArgs),
    /// One SGD step of the classic 2-2-2 worked example, every value printed.
    Example(cli::info::ExampleArgs),
    /// List every adapter wgpu can see, with the limits that matter.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return cli::usage_error(e),
    };
    let run = match cli.cmd {
        Cmd::Train(a) => cli::train::run(*a),
        Cmd::LrFind(a) => cli::lr_find::run(*a).map(|()| ExitCode::SUCCESS),
        Cmd::Bench(a) => cli::bench::run(a).map(|()| ExitCode::SUCCESS),
        Cmd::Tune(a) => cli::tune::run(a).map(|()| ExitCode::SUCCESS),
        Cmd::Eval(a) => cli::model::eval(a).map(|()| ExitCode::SUCCESS),
        Cmd::Predict(a) => cli::model::predict(a).map(|()| ExitCode::SUCCESS),
        Cmd::Export(a) => cli::export::run(a).map(|()| ExitCode::SUCCESS),
        Cmd::Example(a) => cli::info::example(a).map(|()| ExitCode::SUCCESS),
        Cmd::Devices { json } => cli::info::devices(json).map(|()| ExitCode::SUCCESS),
    };
    match run {
        Ok(code) => {
            #[cfg(feature = "mpi")]
            shadertrain::parallel::mpi::finalize();
            code
        }
        Err(e) => failed(&e),
    }
}

/// Prints the one error line. In an MPI job the line names the rank; a
/// failure every rank learned of (in a step) ends each rank normally, the
/// failed one alone saying why; any other ends the whole job at once, so
/// no rank waits for one that has stopped.
fn failed(e: &shadertrain::Error) -> ExitCode {
    #[cfg(feature = "mpi")]
    if let Some((rank, size)) = shadertrain::parallel::rank() {
        use shadertrain::parallel::mpi;
        let agreed =
            matches!(e, shadertrain::Error::Worker { worker, .. } if worker.starts_with("rank "));
        let line = cli::message(e);
        if !line.ends_with(mpi::PEER_FAILED) {
            if agreed {
                eprintln!("error: {line}");
            } else {
                eprintln!("error: rank {rank} of {size}: {line}");
            }
        }
        if agreed {
            mpi::finalize();
            return ExitCode::FAILURE;
        }
        mpi::abort(1);
    }
    eprintln!("error: {}", cli::message(e));
    ExitCode::FAILURE
}
