//! `train --plot FILE.svg`: the training and validation loss against the
//! step, drawn with plotters' SVG backend (no system libraries).

use std::fs::{File, OpenOptions};
use std::path::Path;

use plotters::prelude::*;

use crate::error::Error;

/// Refuses, before a run, a plot path that cannot be written: opens an
/// existing file for appending (leaving it as it is), or creates the file
/// and removes it again.
pub fn check_writable(path: &Path) -> Result<(), Error> {
    let probe = if path.exists() {
        OpenOptions::new().append(true).open(path).map(drop)
    } else {
        File::create(path).and_then(|_| std::fs::remove_file(path))
    };
    probe.map_err(|e| Error::io(path, e))
}

/// Draws the loss curves into an SVG file at `path`.
pub fn loss_curve(path: &Path, train: &[(u32, f32)], val: &[(u32, f64)]) -> Result<(), Error> {
    let fail = |e: String| Error::Data {
        path: path.into(),
        reason: format!("cannot draw the plot: {e}"),
    };
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

    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0u32..last_step, 0f64..top)
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("cross-entropy (nats per token)")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    chart
        .draw_series(LineSeries::new(
            train.iter().map(|&(s, l)| (s, f64::from(l))),
            &BLUE,
        ))
        .map_err(|e| fail(e.to_string()))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(val.iter().copied(), RED.stroke_width(2)))
        .map_err(|e| fail(e.to_string()))?
        .label("validation")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    root.present().map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_check_leaves_files_as_they_were_and_refuses_what_cannot_be_written() {
        let dir = std::env::temp_dir().join(format!("runner-plot-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let existing = dir.join("old.svg");
        std::fs::write(&existing, "a plot the user made").unwrap();
        check_writable(&existing).unwrap();
        assert_eq!(
            std::fs::read_to_string(&existing).unwrap(),
            "a plot the user made"
        );
        let new = dir.join("new.svg");
        check_writable(&new).unwrap();
        assert!(!new.exists(), "the probe file was left behind");
        assert!(check_writable(&dir.join("missing").join("x.svg")).is_err());
        assert!(check_writable(&dir).is_err(), "a directory is not a plot");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
