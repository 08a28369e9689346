#!/usr/bin/env python3
"""Measures what a checkpoint save costs a 2-rank Gloo run on this machine.

Trains a ~110M-parameter OpenELM (tiny.yaml's data, ZeRO-1 by default) for a few steps with a
checkpoint in the middle, samples rank 0's resident memory every few milliseconds, and reports:

  stall_s      how long the step loop stood still at the save (checkpoints.jsonl; for builds that
               do not record it, the save step's gap between metrics lines less the median gap)
  write_s      the write's time, start to commit (checkpoints.jsonl)
  extra_rss    rank 0's peak resident memory while the save blocks the loop, less its resident
               memory when the save began; and its peak while the save is in flight, less its
               peak over the steps before

Usage: scripts/checkpoint_bench.py --corenet BIN [--out DIR] [--set KEY=VALUE ...]
       scripts/checkpoint_bench.py --analyse DIR
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
    parser.add_argument("--analyse", help="only report on the finished run in this directory")
    parser.add_argument("--corenet")
    parser.add_argument("--recipe", default="recipes/tiny.yaml")
    parser.add_argument("--out", default="runs/checkpoint-bench")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if args.analyse:
        report = analyse(Path(args.analyse), int(MODEL["checkpoint.interval"]))
        print(json.dumps(report, indent=1))
        return

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

    (out / "rss_samples.json").write_text(json.dumps(samples))
    print(json.dumps(analyse(out, int(sets["checkpoint.interval"])), indent=1))


def analyse(out, interval):
    """The save at step `interval` of the run in `out` (metrics, checkpoints.jsonl, samples)."""
    samples = json.loads((out / "rss_samples.json").read_text())
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    times = {l["step"]: l["time"] for l in lines}
    gaps = {s: times[s + 1] - times[s] for s in sorted(times) if s + 1 in times}
    typical = statistics.median(g for s, g in gaps.items() if s != interval)
    records = []
    ckpt = out / "checkpoints.jsonl"
    if ckpt.exists():
        records = [json.loads(l) for l in ckpt.read_text().splitlines()]
    record = next((r for r in records if r.get("step") == interval), None)
    # The stall: recorded by runs that record it, else the save step's extra gap.
    stall = record["stall_s"] if record else gaps[interval] - typical
    write = record["write_s"] if record else stall
    start = times[interval]
    rss = lambda a, b: [r for t, r in samples if a <= t <= b]
    at_save = [r for t, r in samples if t <= start][-1]
    before = rss(0, start)
    in_stall = rss(start, start + stall)
    # While the write is in flight (steps go on beside a background write).
    in_flight = rss(start, start + max(stall, write) + typical)
    gib = 2**30
    return {
        "step_s": typical,
        "stall_s": stall,
        "write_s": write,
        "rss_at_save_gib": at_save / gib,
        # What the save holds on top of what the step loop left resident, while it blocks it.
        "extra_rss_during_stall_gib": (max(in_stall) - at_save) / gib,
        # The peak while the save is in flight against the peak of the steps before it.
        "extra_over_step_peak_gib": (max(in_flight) - max(before)) / gib,
        "checkpoints": records,
    }


if __name__ == "__main__":
    main()
