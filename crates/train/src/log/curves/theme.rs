//! The picture's fixed look: the one font, text sizes, pixel layout and colours, kept together
//! so the header, the panels and the last-values cell stay consistent with one another.

use std::sync::OnceLock;

use plotters::style::{FontStyle, RGBColor};

/// The font family every text of the picture uses; registered once from the `dejavu` bytes.
pub(super) const FONT: &str = "sans-serif";

// Layout, in pixels. A panel is about 800 × 480, and text is sized to stay legible when the
// picture is shown scaled down to half. (plotters draws ab_glyph text at size / 1.24 pixels.)
pub(super) const WIDTH: u32 = 1600;
pub(super) const PANEL_HEIGHT: u32 = 480;
pub(super) const COLUMNS: usize = 2;
pub(super) const TITLE_SIZE: f64 = 32.0;
pub(super) const CAPTION_SIZE: f64 = 27.0;
pub(super) const AXIS_DESC_SIZE: f64 = 21.0;
pub(super) const TICK_SIZE: f64 = 19.0;
pub(super) const LEGEND_SIZE: f64 = 21.0;
pub(super) const LEGEND_LINE: u32 = 32;

/// Run colours, in order (the "tab10" palette: distinct, and readable on white).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
/// Dash and gap lengths of the per-source validation lines, one pattern per source.
const DASHES: [(u32, u32); 4] = [(12, 5), (2, 4), (6, 3), (3, 10)];
pub(super) const INK: RGBColor = RGBColor(40, 40, 40);
pub(super) const GRID: RGBColor = RGBColor(225, 225, 225);

/// The colour of the `i`-th run; the palette repeats after ten runs.
pub(super) fn run_colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// The dash pattern of the `k`-th validation source; the patterns repeat after four sources.
pub(super) fn source_dash(k: usize) -> (u32, u32) {
    DASHES[k % DASHES.len()]
}

/// Registers DejaVu Sans as the `sans-serif` family, once per process; false if the font
/// bytes were refused.
pub(super) fn register_font() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
    })
}
