//! [`Legend`]: the run legend under the picture's title, each run's label in its colour, laid
//! out left to right and wrapped into rows that fit the picture's width.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::figure::Drawn;
use super::run_curves::RunCurves;
use super::theme::{run_colour, FONT, INK, LEGEND_LINE, LEGEND_SIZE, WIDTH};

pub(super) struct Legend {
    /// Each run's label and colour, in run order.
    pub(super) entries: Vec<(String, RGBColor)>,
    /// The entries wrapped into rows of (label, colour, x offset).
    rows: Vec<Vec<(String, RGBColor, i32)>>,
}

impl Legend {
    pub(super) fn new(runs: &[RunCurves]) -> Legend {
        let entries: Vec<(String, RGBColor)> = run_labels(runs)
            .into_iter()
            .enumerate()
            .map(|(i, label)| (label, run_colour(i)))
            .collect();
        let rows = wrap(&entries);
        Legend { entries, rows }
    }

    pub(super) fn height(&self) -> u32 {
        LEGEND_LINE * self.rows.len() as u32
    }

    /// Draws the rows from `top` down, each entry a thick stroke of its colour and its label.
    pub(super) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        top: i32,
    ) -> Drawn<DB> {
        let font = (FONT, LEGEND_SIZE)
            .into_font()
            .color(&INK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (row, items) in self.rows.iter().enumerate() {
            let y = top + LEGEND_LINE as i32 * row as i32 + LEGEND_LINE as i32 / 2;
            for (name, colour, x) in items {
                area.draw(&PathElement::new(
                    vec![(*x, y), (*x + 28, y)],
                    colour.stroke_width(4),
                ))?;
                area.draw(&Text::new(name.clone(), (x + 36, y), font.clone()))?;
            }
        }
        Ok(())
    }
}

/// The entries laid out left to right, wrapping to a new row when the picture is full.
fn wrap(entries: &[(String, RGBColor)]) -> Vec<Vec<(String, RGBColor, i32)>> {
    let font = (FONT, LEGEND_SIZE).into_font();
    let mut rows: Vec<Vec<(String, RGBColor, i32)>> = vec![Vec::new()];
    let mut x = 24;
    for (name, colour) in entries {
        // Without the font (it failed to register) an estimate is enough for the layout.
        let text_w = font
            .box_size(name)
            .map_or(name.chars().count() as i32 * 10, |(w, _)| w as i32);
        let item_w = 36 + text_w + 32;
        if x + item_w > WIDTH as i32 - 24 && x > 24 {
            rows.push(Vec::new());
            x = 24;
        }
        if let Some(row) = rows.last_mut() {
            row.push((name.clone(), *colour, x));
        }
        x += item_w;
    }
    rows
}

/// The runs' names in the legend: their names, or `parent/name` for names that occur twice
/// (`a/run` and `b/run`).
fn run_labels(runs: &[RunCurves]) -> Vec<String> {
    runs.iter()
        .map(|run| {
            if runs.iter().filter(|r| r.name == run.name).count() < 2 {
                return run.name.clone();
            }
            let abs = std::fs::canonicalize(&run.dir).unwrap_or_else(|_| run.dir.clone());
            match abs.parent().and_then(Path::file_name) {
                Some(parent) => format!("{}/{}", parent.to_string_lossy(), run.name),
                None => run.dir.display().to_string(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::curves::fake_run::fake_run;

    #[test]
    fn runs_of_the_same_name_are_told_apart() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let runs = [
            RunCurves::read(&fake_run(&tmp.path().join("lr1e-3"), "run", 0.0)).expect("read a"),
            RunCurves::read(&fake_run(&tmp.path().join("lr3e-3"), "run", 0.2)).expect("read b"),
        ];
        assert_eq!(run_labels(&runs), ["lr1e-3/run", "lr3e-3/run"]);
    }
}
