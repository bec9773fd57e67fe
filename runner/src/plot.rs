//! `train --plot FILE.svg`: the training and validation loss against the
//! step, drawn with plotters' SVG backend (no system libraries).

use std::path::Path;

use plotters::prelude::*;

use crate::error::Error;

/// The vertical axis's label: text every plot of ours holds near its
/// start, so that a new `--plot` replaces an earlier run's and no other
/// SVG.
pub const Y_LABEL: &str = "cross-entropy (nats per token)";

/// Draws the loss curves into an SVG file at `path`, written whole
/// ([`write_whole`](crate::outputs::write_whole)).
pub fn loss_curve(path: &Path, train: &[(u32, f32)], val: &[(u32, f64)]) -> Result<(), Error> {
    let mut svg = String::new();
    draw(&mut svg, train, val).map_err(|e| {
        Error::io(
            path,
            std::io::Error::other(format!("cannot draw the plot: {e}")),
        )
    })?;
    crate::outputs::write_whole(path, svg.as_bytes())
}

/// The loss curves as SVG text appended to `svg`.
fn draw(svg: &mut String, train: &[(u32, f32)], val: &[(u32, f64)]) -> Result<(), String> {
    let last_step = train
        .iter()
        .map(|&(s, _)| s)
        .chain(val.iter().map(|&(s, _)| s))
        .max()
        .unwrap_or(1)
        .max(1);
    let losses = train
        .iter()
        .map(|&(_, l)| f64::from(l))
        .chain(val.iter().map(|&(_, l)| l));
    let top = losses
        .filter(|l| l.is_finite())
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.05;

    let root = SVGBackend::with_string(svg, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..last_step, 0f64..top)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(Y_LABEL)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(LineSeries::new(
            train.iter().map(|&(s, l)| (s, f64::from(l))),
            &BLUE,
        ))
        .map_err(|e| e.to_string())?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))
        .map_err(|e| e.to_string())?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
