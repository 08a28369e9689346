#!/usr/bin/env python3
"""Measures what a checkpoint save costs a 2-rank Gloo run on this machine.

Trains a ~110M-parameter OpenELM (tiny.yaml's data, ZeRO-1 by default) for a few steps with a
checkpoint in the middle, samples rank 0's resident memory every few milliseconds, and reports:

  stall_s      how long the step loop stood still at the save: the gap between the save step's
               metrics line and the next one, less the median gap between steps
  extra_rss    rank 0's peak resident memory while saving, less its resident memory when the save
               began (and, as a second figure, less its peak over the steps before)
  write_s      (runs that record it) the background write's time, from checkpoints.jsonl

Usage: scripts/checkpoint_bench.py --corenet BIN [--out DIR] [--set KEY=VALUE ...]
Only the standard library: the numbers go to stdout as one JSON object.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

MODEL = {
    # ~110M parameters: 12 layers of width 768, vocabulary 32000 (embedding tied).
    "model.vocab_size": 32000,
    "model.num_transformer_layers": 12,
    "model.model_dim": 768,
    "model.head_dim": 64,
    "model.ffn_dim_divisor": 256,
    "model.max_context_length": 64,
    "data.seq_len": 64,
    "data.workers": 1,
    "trainer.global_batch": 2,
    "trainer.micro_batch": 1,
    "trainer.sharded_optimizer": "true",
    "trainer.steps": 12,
    "checkpoint.interval": 6,
    "checkpoint.keep_last": 1,
    "logging.interval": 1,
    "logging.progress": "false",
    "logging.tensorboard": "false",
    "eval.interval": 1000,
    "schedule.warmup_iterations": 2,
}


def rss_of(pid):
    """Resident bytes of `pid`, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rank0_pid(launcher_pid):
    """The rank process whose environment says RANK=0 (a child of the launcher)."""
    for child in Path(f"/proc/{launcher_pid}/task").glob("*/children"):
        for pid in child.read_text().split():
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"RANK=0" in env:
                return int(pid)
    return None


def sample(launcher, samples, stop):
    pid = None
    while not stop.is_set():
        if pid is None:
            pid = rank0_pid(launcher.pid)
        if pid is not None:
            rss = rss_of(pid)
            if rss is not None:
                samples.append((time.time(), rss))
        time.sleep(0.005)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corenet", required=True)
    parser.add_argument("--recipe", default="recipes/tiny.yaml")
    parser.add_argument("--out", default="runs/checkpoint-bench")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    out = Path(args.out)
    sets = dict(MODEL)
    sets["run.dir"] = str(out)
    for kv in args.set:
        key, value = kv.split("=", 1)
        sets[key] = value
    cmd = [args.corenet, "launch", "--nproc", "2", "--", "train", args.recipe, "--resume", "none"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(["rm", "-rf", str(out)], check=True)
    samples, stop = [], threading.Event()
    log = open(out.parent / f"{out.name}.log", "w") if out.parent.exists() else sys.stderr
    launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    sampler = threading.Thread(target=sample, args=(launcher, samples, stop))
    sampler.start()
    code = launcher.wait()
    stop.set()
    sampler.join()
    if code != 0:
        sys.exit(f"the run failed ({code}); see {log.name}")

    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    times = {l["step"]: l["time"] for l in lines}
    interval = int(sets["checkpoint.interval"])
    gaps = [times[s + 1] - times[s] for s in sorted(times) if s + 1 in times]
    save_gap = times[interval + 1] - times[interval]
    step_gaps = [g for s, g in zip(sorted(times), gaps) if s != interval]
    typical = statistics.median(step_gaps)
    # Memory: the steps before the save against the save's window (the save step's line to the
    # next step's line, which holds the stall and the first steps of a background write).
    before = [r for t, r in samples if t < times[interval]]
    during = [r for t, r in samples if times[interval] <= t <= times[interval + 1] + typical]
    at_save = [r for t, r in samples if t <= times[interval]][-1]
    (out / "rss_samples.json").write_text(json.dumps(samples))
    report = {
        "step_s": typical,
        "stall_s": save_gap - typical,
        "peak_rss_before_gib": max(before) / 2**30,
        "peak_rss_saving_gib": max(during) / 2**30,
        "rss_at_save_gib": at_save / 2**30,
        # What the save itself holds on top of the state the steps left resident.
        "extra_rss_gib": (max(during) - at_save) / 2**30,
        "extra_over_step_peak_gib": (max(during) - max(before)) / 2**30,
    }
    ckpt = out / "checkpoints.jsonl"
    if ckpt.exists():
        report["checkpoints"] = [json.loads(l) for l in ckpt.read_text().splitlines()]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
