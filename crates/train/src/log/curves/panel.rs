//! [`Panel`]: one quantity over the x axis with every run overlaid, built from the runs'
//! points before anything is drawn, then drawn as one chart of the figure's grid.

use std::collections::BTreeSet;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::figure::Drawn;
use super::line::{finite_points, Chart, Line};
use super::run_curves::{RunCurves, TrainPoint};
use super::scale::{padded, span, tick_label};
use super::theme::{
    run_colour, source_dash, AXIS_DESC_SIZE, CAPTION_SIZE, FONT, GRID, INK, TICK_SIZE,
};
use super::XAxis;

/// One panel: a quantity over the x axis, every run overlaid.
#[derive(Debug, Clone)]
pub(super) struct Panel {
    title: &'static str,
    y_desc: &'static str,
    lines: Vec<Line>,
}

impl Panel {
    /// The panels in grid order; the validation panel only when some run has validations.
    pub(super) fn all(runs: &[RunCurves], x: XAxis) -> Vec<Panel> {
        let mut panels = vec![Panel::train(runs, x, "training loss", "loss", |p| p.loss)];
        if runs.iter().any(|r| !r.validation.is_empty()) {
            panels.push(Panel::validation(runs, x));
        }
        panels.push(Panel::train(runs, x, "learning rate", "lr", |p| p.lr));
        panels.push(Panel::train(runs, x, "gradient norm", "L2 norm", |p| {
            p.grad_norm
        }));
        panels.push(Panel::train(runs, x, "throughput", "tokens/s", |p| {
            p.tokens_per_s
        }));
        panels
    }

    /// One solid line per run of a value logged at every log step.
    fn train(
        runs: &[RunCurves],
        x: XAxis,
        title: &'static str,
        y_desc: &'static str,
        value: fn(&TrainPoint) -> f64,
    ) -> Panel {
        let lines = runs
            .iter()
            .enumerate()
            .map(|(i, run)| Line {
                colour: run_colour(i),
                width: 2,
                dash: None,
                markers: false,
                points: finite_points(run.train.iter().map(|p| (p.at.x(x), value(p)))),
                legend: None,
            })
            .collect();
        Panel {
            title,
            y_desc,
            lines,
        }
    }

    /// The validation panel: each run's overall loss (with dots at the validations) and, when
    /// a run validates on several sources, one thin dashed line per source; the legend tells
    /// the sources apart.
    fn validation(runs: &[RunCurves], x: XAxis) -> Panel {
        let sources: Vec<String> = runs
            .iter()
            .filter(|r| source_names(r).len() > 1)
            .flat_map(source_names)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut lines = Vec::new();
        for (i, run) in runs.iter().enumerate() {
            lines.push(Line {
                colour: run_colour(i),
                width: 2,
                dash: None,
                markers: true,
                points: finite_points(run.validation.iter().map(|p| (p.at.x(x), p.loss))),
                legend: (i == 0 && !sources.is_empty()).then(|| "overall".to_string()),
            });
            if source_names(run).len() > 1 {
                push_source_lines(&mut lines, run, x, run_colour(i), &sources);
            }
        }
        Panel {
            title: "validation loss",
            y_desc: "loss",
            lines,
        }
    }

    /// The x values of every line, for the x range all panels share.
    pub(super) fn x_values(&self) -> impl Iterator<Item = f64> + '_ {
        self.lines.iter().flat_map(|l| l.points.iter().map(|q| q.0))
    }

    fn y_range(&self) -> Option<(f64, f64)> {
        span(self.lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)))
            .map(|(lo, hi)| padded(lo, hi, 0.06))
    }

    pub(super) fn draw<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        x: XAxis,
        (x0, x1): (f64, f64),
    ) -> Drawn<DB> {
        let Some((y0, y1)) = self.y_range() else {
            return self.draw_no_data(area);
        };
        let caption = (FONT, CAPTION_SIZE).into_font().color(&INK);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, caption)
            .margin_left(12)
            .margin_right(28)
            .margin_top(8)
            .margin_bottom(12)
            .x_label_area_size(60)
            .y_label_area_size(92)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        self.draw_mesh(&mut chart, x, x1 - x0, y1 - y0)?;
        for line in &self.lines {
            line.draw(&mut chart)?;
        }
        if self.lines.iter().any(|l| l.legend.is_some()) {
            draw_legend(&mut chart)?;
        }
        Ok(())
    }

    /// The title over an empty cell, for a quantity no run logged a finite value of.
    fn draw_no_data<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        let caption = (FONT, CAPTION_SIZE).into_font().color(&INK);
        let area = area.titled(self.title, caption)?;
        let (w, h) = area.dim_in_pixel();
        area.draw(&Text::new(
            "no data",
            (w as i32 / 2 - 30, h as i32 / 2),
            (FONT, AXIS_DESC_SIZE).into_font().color(&INK),
        ))
    }

    /// Axes, tick labels and a light grid at the major ticks only.
    fn draw_mesh<DB: DrawingBackend>(
        &self,
        chart: &mut Chart<'_, DB>,
        x: XAxis,
        x_width: f64,
        y_width: f64,
    ) -> Drawn<DB> {
        let x_fmt = |v: &f64| tick_label(*v, x_width);
        let y_fmt = |v: &f64| tick_label(*v, y_width);
        chart
            .configure_mesh()
            .x_desc(x.label())
            .y_desc(self.y_desc)
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style((FONT, TICK_SIZE).into_font().color(&INK))
            .axis_desc_style((FONT, AXIS_DESC_SIZE).into_font().color(&INK))
            .bold_line_style(GRID.stroke_width(1))
            .light_line_style(TRANSPARENT)
            .axis_style(INK.stroke_width(1))
            .draw()
    }
}

/// One thin dashed line per source of `run`, in the run's colour; each source's legend entry
/// comes with the first run that has it.
fn push_source_lines(
    lines: &mut Vec<Line>,
    run: &RunCurves,
    x: XAxis,
    colour: RGBColor,
    sources: &[String],
) {
    for (k, source) in sources.iter().enumerate() {
        let points = finite_points(run.validation.iter().map(|p| {
            (
                p.at.x(x),
                p.sources.get(source).copied().unwrap_or(f64::NAN),
            )
        }));
        if points.is_empty() {
            continue;
        }
        let first = !lines
            .iter()
            .any(|l| l.legend.as_deref() == Some(source.as_str()));
        lines.push(Line {
            colour,
            width: 1,
            dash: Some(source_dash(k)),
            markers: false,
            points,
            legend: first.then(|| source.clone()),
        });
    }
}

fn source_names(run: &RunCurves) -> BTreeSet<String> {
    run.validation
        .iter()
        .flat_map(|p| p.sources.keys().cloned())
        .collect()
}

/// The panel's own legend (the validation sources), in the upper right over the lines.
fn draw_legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .margin(10)
        .legend_area_size(44)
        .label_font((FONT, TICK_SIZE).into_font().color(&INK))
        .background_style(WHITE.mix(0.85))
        .border_style(GRID)
        .draw()
}
