//! `shadertrain export`: a saved model written for other tools through
//! [`shadertrain::export`]: an ONNX model, or a PyTorch `nn.Sequential`'s
//! weights (safetensors) with the Python that builds it, printed on stdout
//! and written beside the weights as a `.py` file of the same stem.

use super::check_outputs;
use clap::ValueEnum;
use shadertrain::checkpoint::Checkpoint;
use shadertrain::export::{onnx, torch};
use shadertrain::fsutil::write_atomic;
use shadertrain::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long)]
    model: PathBuf,
    /// What to write.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write (torch: the weights; the Python goes beside them, ending .py).
    #[arg(long)]
    out: PathBuf,
}

/// `--format`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An ONNX model (opset 13): Gemm and activation nodes, input float[batch, n_in].
    Onnx,
    /// A PyTorch nn.Sequential's state_dict as safetensors, and its Python.
    Torch,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let py = a.out.with_extension("py");
    if a.format == Format::Torch && py == a.out {
        return Err(Error::Invalid(format!(
            "--out {}: the torch weights need a name not ending .py; their Python is written beside them as a .py file",
            a.out.display()
        )));
    }
    let py_out = (a.format == Format::Torch).then_some(py.as_path());
    check_outputs(
        &[("--out", Some(&a.out)), ("--out's .py", py_out)],
        &[("--model", Some(&a.model))],
        &[],
    )?;
    let ckpt = Checkpoint::load(&a.model)?;
    // The library's words for a model it cannot export, said of the file.
    let of_model = |e: Error| match e {
        Error::Invalid(msg) => Error::Data {
            path: a.model.display().to_string(),
            msg,
        },
        e => e,
    };
    let mut spec = ckpt.params.network().spec();
    if ckpt.standardizer.is_some() {
        spec += ", input standardisation folded into the first layer";
    }
    match a.format {
        Format::Onnx => {
            write_atomic(&a.out, &onnx::to_onnx(&ckpt).map_err(of_model)?)?;
            eprintln!(
                "wrote {} (ONNX opset {}, {spec})",
                a.out.display(),
                onnx::OPSET
            );
        }
        Format::Torch => {
            let t = torch::to_torch(&ckpt, &a.out.to_string_lossy()).map_err(of_model)?;
            write_atomic(&a.out, &t.weights)?;
            write_atomic(&py, t.python.as_bytes())?;
            out!("{}", t.python);
            eprintln!(
                "wrote {} and {} (PyTorch nn.Sequential, {spec})",
                a.out.display(),
                py.display()
            );
        }
    }
    Ok(())
}
