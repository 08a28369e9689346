//! [`Summary`]: each run's last values (step, training loss, validation loss and its best so
//! far), drawn in the grid cell an odd number of panels leaves free.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::figure::Drawn;
use super::run_curves::RunCurves;
use super::theme::{CAPTION_SIZE, FONT, INK, LEGEND_LINE, LEGEND_SIZE};

pub(super) struct Summary {
    /// One line of text per run, with the run's colour.
    lines: Vec<(String, RGBColor)>,
}

impl Summary {
    /// `entries` are the runs' legend labels and colours, in run order.
    pub(super) fn new(runs: &[RunCurves], entries: &[(String, RGBColor)]) -> Summary {
        let lines = runs
            .iter()
            .zip(entries)
            .map(|(run, (label, colour))| (summary_line(run, label), *colour))
            .collect();
        Summary { lines }
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let area = area.margin(40, 20, 96, 28);
        area.draw(&Text::new(
            "last values",
            (0, 0),
            (FONT, CAPTION_SIZE).into_font().color(&INK),
        ))?;
        let font = (FONT, LEGEND_SIZE)
            .into_font()
            .color(&INK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (i, (line, colour)) in self.lines.iter().enumerate() {
            let y = 64 + LEGEND_LINE as i32 * i as i32;
            area.draw(&PathElement::new(
                vec![(0, y), (28, y)],
                colour.stroke_width(4),
            ))?;
            area.draw(&Text::new(line.clone(), (36, y), font.clone()))?;
        }
        Ok(())
    }
}

/// `name: step 300, loss 4.700, val 4.850 (best 4.800 at 250)`.
fn summary_line(run: &RunCurves, label: &str) -> String {
    let mut parts = Vec::new();
    if let Some(last) = run.train.last() {
        parts.push(format!("step {}", last.at.step));
    }
    if let Some(loss) = run
        .train
        .iter()
        .rev()
        .map(|p| p.loss)
        .find(|l| l.is_finite())
    {
        parts.push(format!("loss {loss:.3}"));
    }
    let finite_val = || run.validation.iter().filter(|p| p.loss.is_finite());
    if let Some(last) = finite_val().next_back() {
        let best = finite_val().min_by(|a, b| a.loss.total_cmp(&b.loss));
        let mut val = format!("val {:.3}", last.loss);
        if let Some(best) = best.filter(|b| b.at.step != last.at.step) {
            val.push_str(&format!(" (best {:.3} at {})", best.loss, best.at.step));
        }
        parts.push(val);
    }
    format!("{label}: {}", parts.join(", "))
}
