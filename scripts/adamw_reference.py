#!/usr/bin/env python3
"""torch.optim.AdamW as the oracle for corenet-train's AdamW.

Two parameters (a 2-D weight that is decayed and a 1-D norm weight that is not, as CoreNet's
parameter groups do), three steps with given gradients and learning rates. Writes
<out>/adamw_io.safetensors with the initial weights, the gradients and learning rates of every
step, and the weights and moments after the last step.

Usage: scripts/adamw_reference.py --out crates/train/tests/fixtures
"""
import argparse
import os

import torch
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(args.seed)
    w = torch.randn(6, 5, generator=g)
    n = 1.0 + 0.1 * torch.randn(5, generator=g)
    lrs = [1e-2, 5e-3, 2.5e-3]
    out = {"init.weight": w.clone(), "init.norm": n.clone(), "lrs": torch.tensor(lrs, dtype=torch.float64)}
    pw, pn = torch.nn.Parameter(w), torch.nn.Parameter(n)
    opt = torch.optim.AdamW(
        [{"params": [pw], "weight_decay": 0.1}, {"params": [pn], "weight_decay": 0.0}],
        lr=lrs[0], betas=(0.9, 0.95), eps=1e-8, foreach=False, fused=False,
    )
    for step, lr in enumerate(lrs):
        for group in opt.param_groups:
            group["lr"] = lr
        gw = torch.randn(6, 5, generator=g)
        gn = torch.randn(5, generator=g) * 0.01
        out[f"grad{step}.weight"], out[f"grad{step}.norm"] = gw, gn
        pw.grad, pn.grad = gw.clone(), gn.clone()
        opt.step()
    out["final.weight"], out["final.norm"] = pw.detach().clone(), pn.detach().clone()
    out["exp_avg.weight"] = opt.state[pw]["exp_avg"].clone()
    out["exp_avg_sq.weight"] = opt.state[pw]["exp_avg_sq"].clone()
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "adamw_io.safetensors"))


if __name__ == "__main__":
    main()
