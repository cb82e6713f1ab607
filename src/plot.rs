//! Training curves as PNG or SVG (`train --plot`), drawn with plotters: the
//! loss on the left, the accuracy on the right (classification only), each
//! with the training and, when there is one, the validation curve; labels
//! at whole epochs, a marker at each epoch where there are few, the legend
//! in a row of its own above the panels, and with a schedule or warmup the
//! learning rate of every step on a secondary axis of the loss panel. When
//! epochs hold many steps, the loss panel also shows the training loss per
//! step, smoothed ([`StepCurve`], fed by the run's step records). And the
//! LR range test's loss against learning rate (`lr-find --plot`).
//!
//! Text is set in DejaVu Sans, embedded through the `dejavu` crate, so a PNG
//! renders the same on a machine with no fonts installed (CI).

use crate::error::{Error, Result, Setting};
use crate::metrics::{MetricsSink, StepRecord};
use crate::train::EpochStats;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Once};

const SIZE: (u32, u32) = (1200, 480);

/// Draws `history` into `path` (`.png` or `.svg`), written through a
/// temporary file and a rename, like every output.
pub fn plot_history(path: &Path, title: &str, history: &[EpochStats]) -> Result<()> {
    plot_run(path, title, history, None, None)
}

/// [`plot_history`], with the learning rate of every step, `(epoch, lr)`
/// points where step `s` of `S` in epoch `e` sits at `e − 1 + s/S`, drawn on
/// a secondary axis of the loss panel (give it when a schedule or warmup
/// changes the rate), and the smoothed training loss per step, `(epoch,
/// loss)` points on the same axis ([`StepCurve::series`]), drawn under the
/// per-epoch curve.
pub fn plot_run(
    path: &Path,
    title: &str,
    history: &[EpochStats],
    lr: Option<&[(f64, f64)]>,
    steps: Option<&[(f64, f64)]>,
) -> Result<()> {
    let ext = check_path(path)?;
    if history.is_empty() {
        return Err(Error::Invalid(
            "a plot needs at least one epoch to draw".into(),
        ));
    }
    register_font()?;
    // The temporary name keeps the extension: plotters picks the encoder by it.
    let tmp = crate::fsutil::TempFile::beside(path)?;
    let drawn = if ext == "png" {
        draw(
            BitMapBackend::new(tmp.path(), SIZE).into_drawing_area(),
            title,
            history,
            lr,
            steps,
        )
    } else {
        draw(
            SVGBackend::new(tmp.path(), SIZE).into_drawing_area(),
            title,
            history,
            lr,
            steps,
        )
    };
    // Dropped on an error, the temporary file is removed.
    drawn?;
    tmp.commit()
}

/// The name a plot's title gives a dataset called `name` (a path, or a
/// built-in's name): an IDX file's directory (`fashion-mnist` for
/// `…/fashion-mnist/train-images-idx3-ubyte.gz`), else the file's name.
pub fn dataset_title(name: &str) -> String {
    let first = name.split(',').next().unwrap_or(name);
    let path = Path::new(first);
    let file = path
        .file_name()
        .map_or_else(|| first.to_string(), |f| f.to_string_lossy().into_owned());
    let idx = file.contains("idx") && file.contains("ubyte");
    match path.parent().and_then(|p| p.file_name()) {
        Some(dir) if idx => dir.to_string_lossy().into_owned(),
        _ => file,
    }
}

/// Draws an LR range test ([`crate::lr_find`]) into `path`: the loss of
/// each step and its smoothed mean against the learning rate on a log
/// axis, the suggested rate marked.
pub fn plot_lr_find(path: &Path, title: &str, sweep: &crate::lr_find::LrSweep) -> Result<()> {
    let ext = check_path(path)?;
    register_font()?;
    let tmp = crate::fsutil::TempFile::beside(path)?;
    let drawn = if ext == "png" {
        draw_lr(
            BitMapBackend::new(tmp.path(), SIZE).into_drawing_area(),
            title,
            sweep,
        )
    } else {
        draw_lr(
            SVGBackend::new(tmp.path(), SIZE).into_drawing_area(),
            title,
            sweep,
        )
    };
    drawn?;
    tmp.commit()
}

fn draw_lr<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    sweep: &crate::lr_find::LrSweep,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (legend, area) = root.split_vertically(LEGEND);
    let (grey, red) = (RGBColor(170, 170, 170), RGBColor(214, 39, 40));
    let keys = [
        ("loss of each step".to_string(), grey),
        ("smoothed".to_string(), BLUE),
        (format!("suggested lr {:.2e}", sweep.suggested), red),
    ];
    draw_legend(&legend, &keys)?;
    let finite = |v: f64| v.is_finite();
    let raw: Vec<(f64, f64)> = sweep
        .points
        .iter()
        .filter(|p| finite(p.loss))
        .map(|p| (p.lr as f64, p.loss))
        .collect();
    let smooth: Vec<(f64, f64)> = sweep
        .points
        .iter()
        .filter(|p| finite(p.smoothed))
        .map(|p| (p.lr as f64, p.smoothed))
        .collect();
    let x_lo = raw.first().map_or(1e-7, |p| p.0);
    let x_hi = raw.last().map_or(1.0, |p| p.0).max(x_lo * 10.0);
    // The y range of the smoothed curve (the raw losses spike at the end).
    let lo = smooth.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let start = smooth.first().map_or(1.0, |p| p.1);
    let hi = smooth
        .iter()
        .map(|p| p.1)
        .fold(start, f64::max)
        .min(start * 2.0)
        .max(lo * 1.01 + 1e-12);
    let pad = (hi - lo).max(1e-9) * 0.08;
    let mut chart = ChartBuilder::on(&area)
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (lo - pad)..(hi + pad))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("learning rate (log scale)")
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_desc("loss")
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(raw, grey.stroke_width(1)))
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
        .map_err(plot_err)?;
    let s = sweep.suggested as f64;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(s, lo - pad), (s, hi + pad)],
            red.stroke_width(2),
        )))
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The lower-case extension of a plot file, which must be `png` or `svg`.
pub fn check_path(path: &Path) -> Result<String> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "png" && ext != "svg" {
        return Err(Error::setting(
            Setting::Plot,
            path.display(),
            "must end in .png or .svg",
        ));
    }
    Ok(ext)
}

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut ok = true;
    ONCE.call_once(|| {
        ok = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(
            "plotting: the embedded font did not load".into(),
        ))
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> Error {
    Error::Invalid(format!("plotting failed: {e}"))
}

/// One series: its name, colour and points (epoch, value).
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
/// The per-step curve: the training colour, lighter.
const LIGHT_BLUE: RGBColor = RGBColor(140, 190, 228);
/// Height of the legend row between the title and the panels.
const LEGEND: u32 = 30;
/// Up to this many points a curve also gets a marker at each.
const MARKERS: usize = 30;

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    history: &[EpochStats],
    lr: Option<&[(f64, f64)]>,
    steps: Option<&[(f64, f64)]>,
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let pts = |f: &dyn Fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (s.epoch as f64, v)))
            .collect()
    };
    let loss: Vec<Series> = vec![
        ("training", BLUE, pts(&|s| Some(s.loss))),
        ("validation", ORANGE, pts(&|s| s.val_loss)),
    ];
    let acc: Vec<Series> = vec![
        ("training", BLUE, pts(&|s| s.accuracy.map(|a| a * 100.0))),
        (
            "validation",
            ORANGE,
            pts(&|s| s.val_accuracy.map(|a| a * 100.0)),
        ),
    ];
    // The legend has a row of its own, off every curve.
    let (legend, panels) = root.split_vertically(LEGEND);
    let mut keys: Vec<(String, RGBColor)> = loss
        .iter()
        .filter(|s| !s.2.is_empty())
        .map(|s| (s.0.to_string(), s.1))
        .collect();
    let steps = steps.filter(|s| !s.is_empty());
    if steps.is_some() {
        keys.insert(1, ("training per step (smoothed)".into(), LIGHT_BLUE));
    }
    let lr = lr.filter(|l| !l.is_empty());
    if lr.is_some() {
        keys.push(("learning rate (right axis)".into(), GREEN));
    }
    draw_legend(&legend, &keys)?;
    let (left, right) = panels.split_horizontally(SIZE.0 / 2);
    panel(&left, "loss", &loss, false, lr, steps)?;
    if acc.iter().any(|(_, _, p)| !p.is_empty()) {
        panel(&right, "accuracy (%)", &acc, true, None, None)?;
    }
    root.present().map_err(plot_err)
}

/// A row of `(name, colour)` keys, centred: a short line, then the name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    keys: &[(String, RGBColor)],
) -> Result<()> {
    let font = TextStyle::from(("sans-serif", 15).into_font()).color(&BLACK);
    let widths: Vec<i32> = keys
        .iter()
        .map(|(name, _)| {
            area.estimate_text_size(name, &font)
                .map_or(8 * name.len() as i32, |(w, _)| w as i32)
        })
        .collect();
    let total: i32 = widths.iter().map(|w| w + 54).sum();
    let (w, h) = area.dim_in_pixel();
    let mut x = (w as i32 - total).max(0) / 2;
    let y = h as i32 / 2;
    for ((name, color), tw) in keys.iter().zip(widths) {
        area.draw(&PathElement::new(
            vec![(x, y), (x + 22, y)],
            color.stroke_width(3),
        ))
        .map_err(plot_err)?;
        area.draw(&Text::new(name.clone(), (x + 28, y - 8), font.clone()))
            .map_err(plot_err)?;
        x += tw + 54;
    }
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    y_label: &str,
    series: &[Series],
    percent: bool,
    lr: Option<&[(f64, f64)]>,
    steps: Option<&[(f64, f64)]>,
) -> Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, _, p)| p.clone()).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let x_min = all.iter().map(|p| p.0).fold(x_max, f64::min);
    // The y range holds the per-step curve too (x: it starts inside the first epoch).
    let all: Vec<(f64, f64)> = all
        .into_iter()
        .chain(steps.unwrap_or(&[]).to_vec())
        .collect();
    let (y_lo, y_hi) = if percent {
        let lo = all.iter().map(|p| p.1).fold(100.0, f64::min);
        ((lo - 5.0).max(0.0), 100.0)
    } else {
        let hi = all.iter().map(|p| p.1).fold(0.0, f64::max);
        (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
    };
    // Epochs are whole numbers: half an epoch of room each side (the step
    // rates start at epoch 0), and a label at integers only.
    let x_lo = if lr.is_some() || steps.is_some() {
        (x_min - 1.0).max(0.0)
    } else {
        x_min - 0.5
    };
    let x_range = x_lo..x_max + 0.5;
    let epochs = (x_max - x_min) as usize + 1;
    let chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(if lr.is_some() { 80 } else { 0 })
        .build_cartesian_2d(x_range.clone(), y_lo..y_hi)
        .map_err(plot_err)?;
    // Epoch 0 (the start) is labelled where a curve reaches it.
    let first = if x_lo == 0.0 { 0.0 } else { x_min };
    let integer = |x: &f64| {
        if (x - x.round()).abs() < 1e-6 && *x >= first - 1e-6 {
            format!("{}", x.round() as i64)
        } else {
            String::new()
        }
    };
    let curves = |chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >| {
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels(epochs.clamp(2, 12) + 1)
            .x_label_formatter(&integer)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(plot_err)?;
        if let Some(steps) = steps {
            let line = LineSeries::new(steps.to_vec(), LIGHT_BLUE.stroke_width(2));
            chart.draw_series(line).map_err(plot_err)?;
        }
        for (_, color, points) in series.iter().filter(|s| !s.2.is_empty()) {
            let c = *color;
            chart
                .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                .map_err(plot_err)?;
            if points.len() <= MARKERS {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, c.filled())))
                    .map_err(plot_err)?;
            }
        }
        Ok::<(), Error>(())
    };
    let Some(lr) = lr else {
        let mut chart = chart;
        return curves(&mut chart);
    };
    let hi = lr.iter().map(|p| p.1).fold(0.0, f64::max);
    let mut chart = chart.set_secondary_coord(x_range, 0.0..(hi * 1.05).max(1e-12));
    curves(&mut chart)?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .y_label_formatter(&|v| rate_label(*v))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_secondary_series(LineSeries::new(lr.to_vec(), GREEN.stroke_width(2)))
        .map_err(plot_err)?;
    Ok(())
}

/// Fewest steps per epoch for which the per-step curve is drawn: with
/// fewer, the per-epoch curve says as much.
pub const STEP_CURVE_MIN_STEPS: usize = 8;
/// Most points a [`StepCurve`] keeps: past it, every other one is dropped
/// and later records are kept at twice the stride, so memory stays bounded
/// however long the run.
pub const STEP_CURVE_MAX_POINTS: usize = 4000;

/// The training loss per step, smoothed, from a run's [`StepRecord`]s.
///
/// A record carries the epoch's running mean loss `L_s` after step `s`.
/// Steps hold `batch` rows (the last of an epoch what remains), so the
/// running sum `L_s · rows(s)` is known, and the mean loss of the steps
/// since the previous record is the difference of two running sums over
/// the rows between them. An exponential moving average over steps, with
/// bias correction (`ema / (1 − β^n)`, so the curve starts at the first
/// losses rather than at 0), smooths those means; each point sits at
/// `e − 1 + s/S` on the epoch axis. Feed it by [`StepCurve::record`], or
/// hand a shared one to [`crate::Trainer::log_to`].
#[derive(Debug, Clone)]
pub struct StepCurve {
    /// Rows of a full step, and of an epoch.
    batch: usize,
    rows: usize,
    /// Steps per epoch.
    steps: usize,
    /// The moving average's decay per step (0: no smoothing).
    beta: f64,
    /// The last record: epoch, step, running sum `L_s · rows(s)`.
    last: Option<(usize, usize, f64)>,
    /// The moving average and its weight `1 − β^n`.
    ema: f64,
    weight: f64,
    /// Records seen, and the stride at which they are kept.
    seen: usize,
    stride: usize,
    points: Vec<(f64, f64)>,
    /// The latest point, kept or not, so the curve reaches the run's end.
    latest: Option<(f64, f64)>,
}

impl StepCurve {
    /// For a run of `epochs` epochs over `rows` samples in steps of `batch`
    /// rows; smoothed over a two-hundredth of the run's steps, at least 10
    /// (longer lags the per-epoch curve visibly on long runs).
    pub fn new(batch: usize, rows: usize, epochs: usize) -> StepCurve {
        let batch = batch.clamp(1, rows.max(1));
        let steps = rows.max(1).div_ceil(batch);
        let total = steps.saturating_mul(epochs.max(1));
        StepCurve {
            batch,
            rows: rows.max(1),
            steps,
            beta: 0.0,
            last: None,
            ema: 0.0,
            weight: 0.0,
            seen: 0,
            stride: 1,
            points: Vec::new(),
            latest: None,
        }
        .smoothing((total as f64 / 200.0).max(10.0))
    }

    /// Smooth over a time constant of `tau` steps (`β = e^(−1/τ)`); below 1,
    /// not at all (each point the mean of its interval).
    pub fn smoothing(mut self, tau: f64) -> StepCurve {
        self.beta = if tau >= 1.0 { (-1.0 / tau).exp() } else { 0.0 };
        self
    }

    /// Steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.steps
    }

    /// Rows in the first `s` steps of an epoch.
    fn rows_at(&self, s: usize) -> usize {
        s.saturating_mul(self.batch).min(self.rows)
    }

    /// Adds a step record: the mean loss of the steps since the previous
    /// record of its epoch (or since the epoch began) into the average.
    pub fn record(&mut self, r: &StepRecord) {
        let now = self.rows_at(r.step);
        let sum = r.loss * now as f64;
        let (prev_step, prev_sum) = match self.last {
            Some((e, s, sum)) if e == r.epoch && s < r.step => (s, sum),
            _ => (0, 0.0),
        };
        self.last = Some((r.epoch, r.step, sum));
        let between = now.saturating_sub(self.rows_at(prev_step));
        let mean = (sum - prev_sum) / between as f64;
        if between == 0 || !mean.is_finite() {
            return;
        }
        // The interval's steps each add its mean: β^k for k steps.
        let decay = self.beta.powf((r.step - prev_step) as f64);
        self.ema = decay * self.ema + (1.0 - decay) * mean;
        self.weight = decay * self.weight + (1.0 - decay);
        let x = (r.epoch - 1) as f64 + r.step as f64 / self.steps as f64;
        let point = (x, self.ema / self.weight);
        self.latest = Some(point);
        self.seen += 1;
        if self.seen.is_multiple_of(self.stride) {
            self.points.push(point);
        }
        if self.points.len() >= STEP_CURVE_MAX_POINTS {
            self.points = self.points.iter().copied().step_by(2).collect();
            self.stride *= 2;
        }
    }

    /// Every point kept, and the latest.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let mut p = self.points.clone();
        if let Some(l) = self.latest.filter(|l| p.last() != Some(l)) {
            p.push(l);
        }
        p
    }

    /// The curve to draw, if it shows more than the per-epoch one: epochs of
    /// at least [`STEP_CURVE_MIN_STEPS`] steps, and at least two points per
    /// epoch on average.
    pub fn series(&self) -> Option<Vec<(f64, f64)>> {
        let p = self.points();
        let span = p.last()?.0 - (p.first()?.0 - 1.0 / self.steps as f64);
        let epochs = span.ceil().max(1.0);
        let dense = self.seen as f64 >= 2.0 * epochs;
        (self.steps >= STEP_CURVE_MIN_STEPS && dense).then_some(p)
    }
}

/// A curve shared with the trainer that feeds it, or one line if a panic
/// while it was held poisoned it.
pub fn lock_curve(c: &Arc<Mutex<StepCurve>>) -> Result<MutexGuard<'_, StepCurve>> {
    c.lock()
        .map_err(|_| Error::Invalid("the step curve's lock was poisoned".into()))
}

/// A curve shared with the trainer that feeds it ([`crate::Trainer::log_to`]).
impl MetricsSink for Arc<Mutex<StepCurve>> {
    fn step(&mut self, r: &StepRecord) -> Result<()> {
        lock_curve(self)?.record(r);
        Ok(())
    }

    fn epoch(&mut self, _: &EpochStats) -> Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// The step records' interval for a run that plots `steps` steps per
/// epoch: every `steps / 8` steps, at least 1 and at most
/// [`crate::metrics::DEFAULT_LOG_EVERY`], so an epoch of 8 steps or more
/// gives at least 8 points, and long epochs the default interval.
pub fn step_curve_log_every(steps: usize) -> usize {
    (steps / 8).clamp(1, crate::metrics::DEFAULT_LOG_EVERY)
}

/// A learning-rate tick: plain decimals where they read well (`0.001`, `8`,
/// `0.25`), scientific notation for rates far from 1 (`3.0e-5`).
fn rate_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&a) {
        // Four significant digits, trailing zeros dropped.
        let digits = (3 - a.log10().floor() as i32).max(0) as usize;
        let text = format!("{v:.digits$}");
        match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.').into(),
            false => text,
        }
    } else {
        format!("{v:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::rate_label;

    #[test]
    fn rate_labels_read_as_numbers() {
        for (v, want) in [
            (0.0, "0"),
            (8.0, "8"),
            (7.2, "7.2"),
            (0.001, "0.001"),
            (0.25, "0.25"),
            (0.0123456, "0.01235"),
            (3e-5, "3.0e-5"),
            (2e5, "2.0e5"),
        ] {
            assert_eq!(rate_label(v), want, "label of {v}");
        }
    }
}
