#!/usr/bin/env python3
"""Runs `corenet bench` and the PyTorch eager reference (scripts/bench_pytorch_reference.py)
interleaved, N repetitions each, in one run, so that load on a shared machine hits both alike;
writes every report and a summary with the medians.

The order alternates per repetition (Rust first on even repetitions, PyTorch first on odd ones).
The reference takes the architecture from the Rust report's `model_config`, so both train
exactly the same shape.

Usage (every argument after `--` goes to both benchmarks):
  .venv-ref/bin/python scripts/bench_compare.py --reps 5 --label tiny \
      -- --model gpt-test --seq 128 --micro-batch 8 --precision f32 --device cpu \
         --set model.vocab_size=2048 ...

Writes docs/bench/<YYYY-MM-DD>-<host>-<label>/{rust,pytorch}-rN.json and summary.json.
"""
import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}")
    print(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "", flush=True)


def portable(command):
    """The command with this machine's directories taken out, so committed reports name no
    machine: paths inside the repository become relative to its root, other absolute paths
    keep only their file name (after `…/`)."""
    words = []
    for w in command.split(" "):
        if os.path.isabs(w):
            rel = os.path.relpath(w, ROOT)
            w = rel if not rel.startswith("..") else "…/" + os.path.basename(w)
        words.append(w)
    return " ".join(words)


def make_portable(report_path):
    with open(report_path) as f:
        report = json.load(f)
    report["command"] = portable(report["command"])
    with open(report_path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--label", required=True, help="names the output folder (model/size)")
    p.add_argument("--out", help="output folder (default docs/bench/<date>-<host>-<label>)")
    p.add_argument("--rust-bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "corenet"))
    p.add_argument("--python", default=sys.executable, help="interpreter with torch for the reference")
    p.add_argument("--ref-extra", action="append", default=[],
                   help="an extra argument for the reference only (repeatable), e.g. --ref-extra=--enable-gqa")
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    bench_args = args.bench_args[1:] if args.bench_args[:1] == ["--"] else args.bench_args
    if args.reps < 1:
        raise SystemExit("--reps must be at least 1")
    host = socket.gethostname()
    out = args.out or os.path.join(ROOT, "docs", "bench", f"{datetime.date.today()}-{host}-{args.label}")
    os.makedirs(out, exist_ok=True)

    # The reference gets the model from the Rust report, so --model/--set stay Rust-side only.
    ref_args, skip = [], False
    for i, a in enumerate(bench_args):
        if skip:
            skip = False
            continue
        if a in ("--set",):
            skip = True
            continue
        if a == "--model":
            ref_args += [a, bench_args[i + 1]]
            skip = True
            continue
        if a == "--activation-checkpointing":
            raise SystemExit("the PyTorch reference has no activation checkpointing; compare without it")
        ref_args.append(a)

    rust, torch_ = [], []
    for r in range(args.reps):
        rust_json = os.path.join(out, f"rust-r{r}.json")
        torch_json = os.path.join(out, f"pytorch-r{r}.json")
        rust_cmd = [args.rust_bin, "bench", *bench_args, "--json", rust_json]
        # Repetition 0 runs Rust first, so its report (the model config) exists for every
        # reference run.
        torch_cmd = [args.python, os.path.join(ROOT, "scripts", "bench_pytorch_reference.py"), *ref_args, *args.ref_extra,
                     "--model-json", os.path.join(out, "rust-r0.json"), "--json", torch_json]
        for cmd in (rust_cmd, torch_cmd) if r % 2 == 0 else (torch_cmd, rust_cmd):
            run(cmd)
        rust.append(make_portable(rust_json))
        torch_.append(make_portable(torch_json))

    def med(reports, key, sub=None):
        return statistics.median((r[key][sub] if sub else r[key]) for r in reports)

    summary = {"label": args.label, "host": host, "reps": args.reps, "bench_args": bench_args,
               "reference_extra_args": args.ref_extra,
               "order": "alternating: rust first on even repetitions, pytorch first on odd ones"}
    for name, reports in (("rust", rust), ("pytorch", torch_)):
        summary[name] = {
            "step_time_s": med(reports, "step_time_s"),
            "step_time_median_s": med(reports, "step_time_median_s"),
            "tokens_per_s": med(reports, "tokens_per_s"),
            "synced_step_s": med(reports, "split", "step_s"),
            "forward_s": med(reports, "split", "forward_s"),
            "backward_s": med(reports, "split", "backward_s"),
            "optimizer_s": med(reports, "split", "optimizer_s"),
            "peak_memory_bytes": med(reports, "peak_memory_bytes"),
            "all_step_time_s": [r["step_time_s"] for r in reports],
        }
    summary["rust_over_pytorch_step_time"] = summary["rust"]["step_time_s"] / summary["pytorch"]["step_time_s"]
    summary["rust_over_pytorch_step_time_median"] = (
        summary["rust"]["step_time_median_s"] / summary["pytorch"]["step_time_median_s"])
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    print(json.dumps({k: summary[k] for k in ("rust_over_pytorch_step_time", "rust_over_pytorch_step_time_median")}))
    print(f"rust {summary['rust']['step_time_s'] * 1e3:.2f} ms/step, pytorch {summary['pytorch']['step_time_s'] * 1e3:.2f} ms/step -> {out}")


if __name__ == "__main__":
    main()
