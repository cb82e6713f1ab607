//! `shadertrain lr-find`: the learning-rate range test
//! ([`shadertrain::lr_find`]) with the `train` flags for the data, the
//! network, the batch, the optimiser and the device; it prints the
//! suggested `--lr` with the rule it used, draws loss against learning rate
//! with `--plot`, and writes nothing else.

use super::train::{prepare_sweep, TrainArgs};
use shadertrain::lr_find::LrFind;
use shadertrain::Result;

#[derive(clap::Args)]
pub struct LrFindArgs {
    #[command(flatten)]
    train: TrainArgs,
    /// The sweep's first learning rate.
    #[arg(long, default_value_t = 1e-7, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    start_lr: f32,
    /// The sweep's last learning rate.
    #[arg(long, default_value_t = 10.0, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    end_lr: f32,
    /// Steps (learning rates) of the sweep, one batch each.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    steps: usize,
    /// Print the sweep as JSON (every step's lr, loss and smoothed loss, and the suggestion).
    #[arg(long)]
    json: bool,
}

pub fn run(mut a: LrFindArgs) -> Result<()> {
    let sweep = LrFind {
        start: a.start_lr,
        end: a.end_lr,
        steps: a.steps,
    };
    sweep.validate()?;
    let plot = a.train.plot_path();
    let (mut t, data, title) = prepare_sweep(&mut a.train)?;
    let found = t.lr_find(&data, &sweep)?;
    if let Some(path) = &plot {
        shadertrain::plot::plot_lr_find(path, &title, &found)?;
    }
    if a.json {
        let text = serde_json::to_string_pretty(&found).unwrap_or_default();
        outln!("{text}");
        return Ok(());
    }
    outln!(
        "swept {} learning rates from {:e} to {:e} on {} ({}){}",
        found.points.len(),
        sweep.start,
        found.points.last().map_or(sweep.start, |p| p.lr),
        data.name,
        t.backend().describe(),
        match found.diverged_at {
            Some(lr) => format!("; the loss diverged at {lr:.2e}"),
            None => String::new(),
        }
    );
    outln!("lowest smoothed loss at lr {:.2e}", found.min_loss_lr);
    outln!("suggested --lr {:.2e} ({})", found.suggested, found.rule);
    Ok(())
}
