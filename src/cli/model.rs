//! `shadertrain eval` and `predict`: a saved model on the chosen device,
//! through [`shadertrain::Trainer::model`], scored or run on a dataset
//! standardised as in training.

use super::{check_outputs, device, open, BackendArg};
use shadertrain::checkpoint::Checkpoint;
use shadertrain::data::{Dataset, Source};
use shadertrain::fsutil::write_atomic;
use shadertrain::network::Activation;
use shadertrain::train::{batch_size, class_of, confusion_matrix};
use shadertrain::{Error, Result, Trainer};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long)]
    model: PathBuf,
    /// A built-in set, a CSV file (for predict: with or without the target
    /// column) or an IDX directory.
    #[arg(long)]
    data: String,
    /// CSV target column (default: the last).
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Samples per forward pass.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1024, value_parser = super::at_least_1())]
    batch: usize,
    /// CPU threads (0: one per core).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0, value_parser = super::threads())]
    threads: usize,
    #[command(flatten)]
    parallel: super::ParallelArgs,
    /// Print JSON (eval).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    m: ModelArgs,
    /// Where to write the CSV (default, or `-`: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A saved model on the chosen device, and the data it is to see,
/// standardised as in training.
struct Loaded {
    ckpt: Checkpoint,
    data: Dataset,
    /// Whether the data holds targets (not a CSV of inputs alone).
    labelled: bool,
    trainer: Trainer,
}

/// `inputs_only_ok`: a CSV of the model's input columns alone is data (predict).
fn load(m: &ModelArgs, inputs_only_ok: bool, quiet: bool) -> Result<Loaded> {
    let rank = m.parallel.start()?;
    if rank.is_some_and(|(r, _)| r != 0) {
        // Only rank 0 prints and writes.
        super::silence_stdout();
    }
    let quiet = quiet || rank.is_some_and(|(r, _)| r != 0);
    let ckpt = Checkpoint::load(&m.model)?;
    let net = ckpt.params.network().clone();
    let source = Source::parse(&m.data)?;
    let target = m.target.as_deref();
    let seed = ckpt.state.seed;
    let (mut data, labelled) = if inputs_only_ok {
        source.load_for_prediction(target, &net, seed)?
    } else {
        (source.load(target, net.outputs(), seed)?, true)
    };
    source.check_fits(&data, &net, "the model")?;
    if let Some(z) = &ckpt.standardizer {
        z.apply(&mut data)?;
    }
    shadertrain::parallel::check_same_data(&data, "evaluation")?;
    let dev = device(m.backend, m.adapter.as_deref(), m.threads)?;
    let dev = m.parallel.device(dev, m.backend, m.threads)?;
    let capacity = batch_size(m.batch, usize::MAX, data.len());
    let trainer = open(&dev, &net, capacity, quiet)?.model(&ckpt)?;
    Ok(Loaded {
        ckpt,
        data,
        labelled,
        trainer,
    })
}

pub fn eval(m: ModelArgs) -> Result<()> {
    let Loaded {
        ckpt,
        data,
        mut trainer,
        ..
    } = load(&m, false, m.json)?;
    // One pass: the totals and the outputs the confusion matrix needs.
    let (totals, metric, out) = trainer.evaluate_and_predict(&data)?;
    let confusion = data
        .is_classification()
        .then(|| confusion_matrix(&out, &data));
    let acc = totals.accuracy(metric);
    if m.json {
        let json = serde_json::json!({
            "model": m.model.display().to_string(),
            "layers": ckpt.params.network().sizes(),
            "network": ckpt.params.network().spec(),
            "activations": ckpt
                .params
                .network()
                .layers()
                .iter()
                .map(|l| l.act.name())
                .collect::<Vec<_>>(),
            "samples": data.len(),
            "loss": totals.loss(),
            "accuracy": acc,
            "confusion": confusion,
        });
        outln!("{json}");
        return Ok(());
    }
    outln!(
        "model {} ({} epochs) on '{}' ({} samples)",
        ckpt.params.network().describe(),
        ckpt.state.epoch,
        data.name,
        data.len()
    );
    outln!("loss: {:.6}", totals.loss());
    if let Some(acc) = acc {
        outln!("accuracy: {:.2}%", acc * 100.0);
    }
    if let Some(c) = confusion {
        outln!("confusion matrix (rows: true class, columns: predicted):");
        let w = c
            .iter()
            .flatten()
            .max()
            .map_or(1, |v| v.to_string().len())
            .max(3);
        let head: Vec<String> = (0..c.len()).map(|j| format!("{j:>w$}")).collect();
        outln!("      {}", head.join(" "));
        for (i, row) in c.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>w$}")).collect();
            outln!("  {i:>3} {}", cells.join(" "));
        }
    }
    Ok(())
}

pub fn predict(a: PredictArgs) -> Result<()> {
    let dest = a.out.as_deref().filter(|p| *p != Path::new("-"));
    let data = Source::parse(&a.m.data)?;
    let mut inputs = vec![("--model", Some(a.m.model.as_path()))];
    inputs.extend(
        super::files_of(&data)
            .into_iter()
            .map(|p| ("--data", Some(p))),
    );
    check_outputs(&[("--out", dest)], &inputs, &[])?;
    let Loaded {
        ckpt,
        data,
        labelled,
        mut trainer,
    } = load(&a.m, true, dest.is_none())?;
    let out = trainer.predict(&data)?;
    // A class column only for a classifier: labelled data says so; for
    // inputs alone, an output of probabilities (softmax or sigmoid) does.
    let classifies = if labelled {
        data.is_classification()
    } else {
        matches!(
            ckpt.params.network().output_activation(),
            Activation::Softmax | Activation::Sigmoid
        )
    };
    let no = data.outputs;
    let mut csv = String::new();
    let mut head: Vec<String> = (0..no).map(|k| format!("output_{k}")).collect();
    if classifies {
        head.push("predicted".into());
    }
    csv += &head.join(",");
    csv.push('\n');
    for row in out.chunks(no) {
        let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        csv += &cells.join(",");
        if classifies {
            csv += &format!(",{}", class_of(row));
        }
        csv.push('\n');
    }
    match dest {
        Some(p) => write_atomic(p, csv.as_bytes()),
        None => super::write_out(csv.as_bytes()).map_err(|e| Error::io(Path::new("<stdout>"), e)),
    }
}
