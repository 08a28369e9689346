//! [`Line`]: one series of a panel (a run's value, or one validation source of a run), with
//! its style and its entry in the panel's legend, and how it is drawn on the panel's chart.

use plotters::chart::SeriesAnno;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::figure::Drawn;
use super::theme::INK;

/// A panel's chart: both axes are plain `f64` ranges.
pub(super) type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// One line of a panel.
#[derive(Debug, Clone)]
pub(super) struct Line {
    pub(super) colour: RGBColor,
    pub(super) width: u32,
    /// Dash and gap lengths; solid when `None`.
    pub(super) dash: Option<(u32, u32)>,
    /// Dots at the points (sparse series, such as validations).
    pub(super) markers: bool,
    /// Finite points only, in step order.
    pub(super) points: Vec<(f64, f64)>,
    /// The panel's legend entry this line stands for, if any.
    pub(super) legend: Option<String>,
}

impl Line {
    pub(super) fn draw<'a, DB: DrawingBackend + 'a>(&self, chart: &mut Chart<'a, DB>) -> Drawn<DB> {
        let style = self.colour.stroke_width(self.width);
        let points = self.points.iter().copied();
        let series = match self.dash {
            None => chart.draw_series(LineSeries::new(points, style))?,
            Some((dash, gap)) => {
                chart.draw_series(DashedLineSeries::new(points, dash, gap, style))?
            }
        };
        if let Some(label) = &self.legend {
            self.legend_entry(series, label);
        }
        // A line needs two points; a single one (or sparse validations) gets a dot.
        if self.markers || self.points.len() == 1 {
            let dot = self.colour.filled();
            chart.draw_series(self.points.iter().map(|&p| Circle::new(p, 3, dot)))?;
        }
        Ok(())
    }

    /// The line's sample in the panel legend, in ink rather than the run's colour: the legend
    /// names what the dash pattern stands for (a validation source), whichever run drew it.
    fn legend_entry<'a, DB: DrawingBackend + 'a>(
        &self,
        series: &mut SeriesAnno<'a, DB>,
        label: &str,
    ) {
        let style = INK.stroke_width(self.width);
        let series = series.label(label);
        match self.dash {
            None => series.legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 36, y)], style)),
            Some((dash, gap)) => series.legend(move |(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 36, y)], dash, gap, style)
            }),
        };
    }
}

/// The (x, y) points where both are known and finite.
pub(super) fn finite_points(points: impl Iterator<Item = (Option<f64>, f64)>) -> Vec<(f64, f64)> {
    points
        .filter_map(|(x, y)| Some((x?, y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}
