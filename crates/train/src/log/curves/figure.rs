//! [`Figure`]: everything the picture shows, computed before any pixel is drawn (panels, the
//! x range they share, the run legend, the last values), and its layout: a header with the
//! title and the legend over a grid of panels, two to a row.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::legend::Legend;
use super::panel::Panel;
use super::run_curves::RunCurves;
use super::scale::{padded, span};
use super::summary::Summary;
use super::theme::{COLUMNS, FONT, INK, PANEL_HEIGHT, TITLE_SIZE};
use super::XAxis;

/// What drawing onto a plotters area returns.
pub(super) type Drawn<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Where the legend rows start, under the title.
const LEGEND_TOP: u32 = 56;

/// Everything to draw, computed before any pixel is: panels, shared x range, run legend.
pub(super) struct Figure {
    x: XAxis,
    legend: Legend,
    panels: Vec<Panel>,
    x_range: (f64, f64),
    summary: Summary,
}

impl Figure {
    pub(super) fn new(runs: &[RunCurves], x: XAxis) -> Figure {
        let panels = Panel::all(runs, x);
        let x_range = span(panels.iter().flat_map(Panel::x_values))
            .map_or((0.0, 1.0), |(lo, hi)| padded(lo, hi, 0.0));
        let legend = Legend::new(runs);
        let summary = Summary::new(runs, &legend.entries);
        Figure {
            x,
            legend,
            panels,
            x_range,
            summary,
        }
    }

    fn header_height(&self) -> u32 {
        LEGEND_TOP + self.legend.height() + 8
    }

    fn rows(&self) -> usize {
        self.panels.len().div_ceil(COLUMNS)
    }

    /// The picture's height in pixels; its width is fixed.
    pub(super) fn height(&self) -> u32 {
        self.header_height() + PANEL_HEIGHT * self.rows() as u32
    }

    pub(super) fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        root.fill(&WHITE)?;
        let (header, body) = root.split_vertically(self.header_height());
        self.draw_header(&header)?;
        let cells = body.split_evenly((self.rows(), COLUMNS));
        for (cell, panel) in cells.iter().zip(&self.panels) {
            panel.draw(cell, self.x, self.x_range)?;
        }
        // An odd number of panels leaves the last cell free: the runs' last values go there.
        if let Some(cell) = cells.get(self.panels.len()) {
            self.summary.draw(cell)?;
        }
        Ok(())
    }

    fn draw_header<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Drawn<DB> {
        area.draw(&Text::new(
            self.title(),
            (24, 14),
            (FONT, TITLE_SIZE).into_font().color(&INK),
        ))?;
        self.legend.draw(area, LEGEND_TOP as i32)
    }

    fn title(&self) -> String {
        match self.legend.entries.as_slice() {
            [(name, _)] => format!("{name}: training curves by {}", self.x.noun()),
            names => format!("{} runs: training curves by {}", names.len(), self.x.noun()),
        }
    }
}
