//! Training curves as PNG or SVG (`train --plot`), drawn with plotters: the
//! loss on the left, the accuracy on the right (classification only), each
//! with the training and, when there is one, the validation curve.
//!
//! Text is set in DejaVu Sans, embedded through the `dejavu` crate, so a PNG
//! renders the same on a machine with no fonts installed (CI).

use crate::error::{Error, Result, Setting};
use crate::train::EpochStats;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const SIZE: (u32, u32) = (1200, 480);

/// Draws `history` into `path` (`.png` or `.svg`), written through a
/// temporary file and a rename, like every output.
pub fn plot_history(path: &Path, title: &str, history: &[EpochStats]) -> Result<()> {
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
        )
    } else {
        draw(
            SVGBackend::new(tmp.path(), SIZE).into_drawing_area(),
            title,
            history,
        )
    };
    // Dropped on an error, the temporary file is removed.
    drawn?;
    tmp.commit()
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

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    history: &[EpochStats],
) -> Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (left, right) = root.split_horizontally(SIZE.0 / 2);
    let pts = |f: &dyn Fn(&EpochStats) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|s| f(s).filter(|v| v.is_finite()).map(|v| (s.epoch as f64, v)))
            .collect()
    };
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let loss: Vec<Series> = vec![
        ("training", blue, pts(&|s| Some(s.loss))),
        ("validation", orange, pts(&|s| s.val_loss)),
    ];
    panel(&left, "loss", &loss, false)?;
    let acc: Vec<Series> = vec![
        ("training", blue, pts(&|s| s.accuracy.map(|a| a * 100.0))),
        (
            "validation",
            orange,
            pts(&|s| s.val_accuracy.map(|a| a * 100.0)),
        ),
    ];
    if acc.iter().any(|(_, _, p)| !p.is_empty()) {
        panel(&right, "accuracy (%)", &acc, true)?;
    }
    root.present().map_err(plot_err)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    y_label: &str,
    series: &[Series],
    percent: bool,
) -> Result<()> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, _, p)| p.clone()).collect();
    let x_max = all.iter().map(|p| p.0).fold(1.0, f64::max);
    let x_min = all.iter().map(|p| p.0).fold(x_max, f64::min);
    let (y_lo, y_hi) = if percent {
        let lo = all.iter().map(|p| p.1).fold(100.0, f64::min);
        ((lo - 5.0).max(0.0), 100.0)
    } else {
        let hi = all.iter().map(|p| p.1).fold(0.0, f64::max);
        (0.0, if hi > 0.0 { hi * 1.05 } else { 1.0 })
    };
    let x_hi = if x_max > x_min { x_max } else { x_min + 1.0 };
    let mut chart = ChartBuilder::on(area)
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_min..x_hi, y_lo..y_hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (name, color, points) in series.iter().filter(|s| !s.2.is_empty()) {
        let c = *color;
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(plot_err)
}
