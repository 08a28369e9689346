//! Loss-curve pictures: training loss, validation loss, learning rate, gradient norm and
//! throughput of one or more runs, read from their `metrics.jsonl` (and `validation.jsonl`) and
//! drawn into one PNG or SVG, one panel per quantity with the runs overlaid (`corenet plot`, and
//! the trainer's `curves.png` at checkpoints).
//!
//! Text is drawn with DejaVu Sans compiled into the binary (the `dejavu` crate), so a picture
//! looks the same on a machine without system fonts. The picture is written to a temporary file
//! next to its destination and renamed into place, so a reader never sees half a PNG.
//!
//! [`RunCurves`] reads a run; [`plot`] lays the runs out as a `Figure` (a header with the run
//! `Legend`, then a grid of `Panel`s of `Line`s and a `Summary` of last values) and writes it
//! as a picture file. Sizes, fonts and colours are in `theme`, axis ranges and tick labels in
//! `scale`.

mod figure;
mod legend;
mod line;
mod panel;
mod picture_file;
mod run_curves;
mod scale;
mod summary;
mod theme;
mod x_axis;

#[cfg(test)]
mod fake_run;

pub use run_curves::{
    Position, RunCurves, TrainPoint, ValidationPoint, METRICS_FILE, VALIDATION_FILE,
};
pub use x_axis::XAxis;

use std::path::Path;

use crate::error::{Error, Result};
use figure::Figure;
use picture_file::Format;

/// Draws the curves of `runs` into `out`, a `.png` or `.svg` file (created with its parent
/// directories; replaced atomically if it exists).
pub fn plot(runs: &[RunCurves], x: XAxis, out: &Path) -> Result<()> {
    let plot_err = |reason: String| Error::Plot {
        path: out.to_path_buf(),
        reason,
    };
    let format = Format::of(out).ok_or_else(|| {
        plot_err("unsupported picture format: the file name must end in .png or .svg".into())
    })?;
    check_runs(runs, x).map_err(plot_err)?;
    if !theme::register_font() {
        return Err(plot_err(
            "the built-in DejaVu Sans font could not be loaded".into(),
        ));
    }
    picture_file::write(&Figure::new(runs, x), out, format)
}

/// Why `runs` cannot be drawn against `x`, if they cannot. A run that lacks the axis is left
/// out with a warning rather than failing the picture of the others.
fn check_runs(runs: &[RunCurves], x: XAxis) -> std::result::Result<(), String> {
    if runs.is_empty() {
        return Err("no runs to draw".into());
    }
    for run in runs.iter().filter(|r| !r.has_axis(x)) {
        tracing::warn!(run = %run.name, dir = %run.dir.display(), field = x.field(),
            "the run's logs do not record this x axis (older metrics files lack elapsed_s); the run is left out of the picture");
    }
    if !runs.iter().any(|r| r.has_axis(x)) {
        return Err(format!(
            "no run records `{}` for the {} axis; plot against another x axis (--x step)",
            x.field(),
            x.label()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fake_run::{fake_run, write_lines};
    use super::theme::WIDTH;
    use super::*;
    use serde_json::json;

    /// The texts of an SVG's `<text>` elements, trimmed.
    fn svg_texts(svg: &str) -> Vec<String> {
        svg.split("</text>")
            .filter_map(|chunk| chunk.rsplit_once('>').map(|(_, t)| t.trim().to_string()))
            .collect()
    }

    fn png_size(bytes: &[u8]) -> (u32, u32) {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&bytes[12..16], b"IHDR");
        let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        (be(&bytes[16..20]), be(&bytes[20..24]))
    }

    #[test]
    fn plots_a_png_of_the_expected_size_with_content() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunCurves::read(&fake_run(tmp.path(), "run-a", 0.0)).expect("read");
        let out = tmp.path().join("pics/curves.png");
        plot(std::slice::from_ref(&run), XAxis::Step, &out).expect("plot");
        let bytes = std::fs::read(&out).expect("read png");
        let figure = Figure::new(std::slice::from_ref(&run), XAxis::Step);
        assert_eq!(png_size(&bytes), (WIDTH, figure.height()));
        let img = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, figure.height()));
        let first = img.get_pixel(0, 0);
        let other = img.pixels().filter(|p| *p != first).count();
        assert!(
            other > 10_000,
            "only {other} pixels differ from the background"
        );
        // The run colour is there (the loss line), not only black text.
        assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(out.parent().expect("parent"))
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "curves.png")
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn svg_names_runs_and_panels() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let runs = [
            RunCurves::read(&fake_run(tmp.path(), "run-a", 0.0)).expect("read a"),
            RunCurves::read(&fake_run(tmp.path(), "run-b", 0.4)).expect("read b"),
        ];
        for x in [XAxis::Step, XAxis::Tokens, XAxis::Time] {
            let out = tmp.path().join(format!("curves-{x}.svg"));
            plot(&runs, x, &out).expect("plot");
            let texts = svg_texts(&std::fs::read_to_string(&out).expect("read svg"));
            for text in [
                "run-a",
                "run-b",
                "training loss",
                "validation loss",
                "learning rate",
                "refinedweb",
                "pile",
                x.label(),
            ] {
                assert!(texts.iter().any(|t| t == text), "{x}: {text} missing");
            }
        }
    }

    #[test]
    fn a_single_point_and_constant_series_draw() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("tiny");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // No validation, no elapsed_s, one record whose throughput is null.
        write_lines(
            &dir.join(METRICS_FILE),
            &[
                json!({"step": 1, "loss": 9.0, "lr": 0.0, "grad_norm": 2.0, "tokens_seen": 4096, "tokens_per_s": null}),
            ],
        );
        let run = RunCurves::read(&dir).expect("read");
        plot(std::slice::from_ref(&run), XAxis::Step, &dir.join("c.png")).expect("plot png");
        plot(
            std::slice::from_ref(&run),
            XAxis::Tokens,
            &dir.join("c.svg"),
        )
        .expect("plot svg");
        let texts = svg_texts(&std::fs::read_to_string(dir.join("c.svg")).expect("read"));
        assert!(texts.iter().any(|t| t == "no data"), "{texts:?}");
        assert!(!texts.iter().any(|t| t == "validation loss"), "{texts:?}");
        // Without elapsed_s there is nothing to draw against time.
        let err = plot(&[run], XAxis::Time, &dir.join("t.png"))
            .expect_err("no time axis")
            .to_string();
        assert!(
            err.contains("elapsed (s)") && err.contains("t.png"),
            "{err}"
        );
    }

    #[test]
    fn unknown_extensions_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let run = RunCurves::read(&fake_run(tmp.path(), "run-a", 0.0)).expect("read");
        let out = tmp.path().join("curves.jpg");
        let err = plot(&[run], XAxis::Step, &out)
            .expect_err("jpg")
            .to_string();
        assert!(err.contains("curves.jpg") && err.contains(".png"), "{err}");
        assert!(!out.exists());
    }
}
