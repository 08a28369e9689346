//! `corenet plot RUN [RUN ...] [--x step|tokens|time] [--out curves.png]`: loss-curve pictures
//! of one or more runs (training and validation loss, learning rate, gradient norm,
//! throughput), the runs overlaid in each panel.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use corenet_train::log::curves::{plot, RunCurves, XAxis};

#[derive(Args)]
pub struct PlotArgs {
    /// Run directories (each holding metrics.jsonl, and validation.jsonl when it validates),
    /// or their metrics.jsonl files.
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// What the x axis measures: step, tokens (tokens seen) or time (seconds since the start).
    #[arg(long, default_value = "step", value_parser = parse_x)]
    x: XAxis,
    /// The picture to write, .png or .svg. Default: curves.png in the run's directory; required
    /// with several runs.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn parse_x(s: &str) -> Result<XAxis, String> {
    s.parse::<XAxis>().map_err(|e| e.to_string())
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|dir| RunCurves::read(dir))
        .collect::<Result<Vec<_>, _>>()?;
    let out = match (args.out, runs.as_slice()) {
        (Some(out), _) => out,
        (None, [run]) => run.dir.join("curves.png"),
        (None, _) => bail!(
            "{} runs given: name the picture with --out (e.g. --out compare.png)",
            runs.len()
        ),
    };
    plot(&runs, args.x, &out)?;
    println!("{}", out.display());
    Ok(())
}
