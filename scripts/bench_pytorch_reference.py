#!/usr/bin/env python3
"""The PyTorch eager reference for `corenet bench`: the same OpenELM shape trained on the same
synthetic batch with plain PyTorch, timed the same way, writing the same JSON fields.

Model, as corenet-rs (and CoreNet) build it: token embedding tied to the output head; per layer
(layer-wise scaling: each layer's query/KV heads and FFN width from the config, as
scripts/openelm_reference.py derives them) a pre-norm block with fused bias-free QKV, per-head
q/k RMSNorm, RoPE (rotate-half, f32 tables cached up to rope_max_length, rotated in f32 and cast
back), GQA by `repeat_interleave` as CoreNet does (`--enable-gqa`: inside SDPA, as corenet-rs
does on CPU), `F.scaled_dot_product_attention(is_causal=True)`, SwiGLU FFN;
final RMSNorm. RMSNorm is CoreNet's composite (statistics in f32, `type_as`, times the weight).
Loss: cross-entropy in f32 plus z-loss (coef 1e-4). Optimizer: `torch.optim.AdamW(fused=True)`,
betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on >= 2-D weights only, gradient clipping at 1.0
(`clip_grad_norm_`), `zero_grad()` with PyTorch's default set_to_none=True.

Precision: bf16 is bf16 *weights* (not autocast), as corenet-rs does: the model is cast to
bf16, AdamW runs on f32 master copies, each step copies the (clipped) bf16 gradients into the
masters' f32 grads and the updated masters back into the model.

Timing: `warmup` untimed steps; `steps` steps without any host read (tokens/s from the window's
wall time, closed by one synchronisation); `split_steps` steps synchronised after the loss,
after backward and after the optimizer (forward/backward/optimizer split; communication 0).

Usage:
  .venv-ref/bin/python scripts/bench_pytorch_reference.py --model gpt-test --seq 128 \
      --micro-batch 8 --precision f32 --device cpu --json out.json
  ... --model-json FILE   take the architecture from a JSON object with CoreNet field names
                          (e.g. the "model_config" of a corenet bench report)
"""
import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from openelm_reference import layer_shapes  # noqa: E402  (per-layer q heads, kv heads, FFN dim)

EPS = 1e-6
# (layers, model_dim, head_dim) of the OpenELM presets; the rest as CoreNet's openelm configs.
OPENELM = {"OpenELM-270M": (16, 1280, 64), "OpenELM-450M": (20, 1536, 64),
           "OpenELM-1_1B": (28, 2048, 64), "OpenELM-3B": (36, 3072, 128)}
DEFAULTS = {"vocab_size": 32000, "max_context_length": 2048, "ffn_with_glu": True,
            "ffn_dim_divisor": 256, "rope_freq_constant": 10000.0, "rope_max_length": 4096,
            "normalize_qk_projections": False, "share_input_output_layers": False}


def preset(name):
    if name in OPENELM:
        n, d, h = OPENELM[name]
        return {**DEFAULTS, "num_transformer_layers": n, "model_dim": d, "head_dim": h,
                "qkv_multipliers": [0.5, 1.0], "num_gqa_groups": 4, "ffn_multipliers": [0.5, 4.0],
                "normalize_qk_projections": True, "share_input_output_layers": True}
    if name == "gpt-test":
        return {**DEFAULTS, "num_transformer_layers": 1, "model_dim": 128, "head_dim": 64,
                "qkv_multipliers": [0.25, 0.5], "num_gqa_groups": 1, "ffn_multipliers": [0.25, 0.75],
                "normalize_qk_projections": True, "share_input_output_layers": True}
    raise SystemExit(f"unknown preset {name!r} (known: {', '.join([*OPENELM, 'gpt-test'])}; "
                     "or pass --model-json)")


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., C)
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).type_as(x) * self.weight


class Rope(nn.Module):
    def __init__(self, head_dim, base, max_len):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], -1)  # (P, D)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x):  # (B, H, T, D)
        t, half = x.shape[2], x.shape[3] // 2
        xf = x.float()
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], -1)
        return (xf * self.cos[:t] + rotated * self.sin[:t]).type_as(x)


class Attention(nn.Module):
    def __init__(self, d, hd, q, kv, qk_norm, enable_gqa):
        super().__init__()
        self.q, self.kv, self.hd, self.enable_gqa = q, kv, hd, enable_gqa
        self.qkv_proj = nn.Linear(d, (q + 2 * kv) * hd, bias=False)
        self.q_norm = RMSNorm(hd) if qk_norm else None
        self.k_norm = RMSNorm(hd) if qk_norm else None
        self.out_proj = nn.Linear(q * hd, d, bias=False)

    def forward(self, x, rope):  # (B, T, C)
        b, t, _ = x.shape
        qkv = self.qkv_proj(x).view(b, t, self.q + 2 * self.kv, self.hd).transpose(1, 2)
        q, k, v = qkv.split([self.q, self.kv, self.kv], dim=1)  # (B, H, T, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = rope(q), rope(k)
        group = self.q // self.kv
        if group > 1 and not self.enable_gqa:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           enable_gqa=group > 1 and self.enable_gqa)  # (B, Hq, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.q * self.hd))


class FeedForward(nn.Module):
    def __init__(self, d, f, glu):
        super().__init__()
        self.glu = glu
        self.proj_1 = nn.Linear(d, 2 * f if glu else f, bias=False)
        self.proj_2 = nn.Linear(f, d, bias=False)

    def forward(self, x):
        h = self.proj_1(x)
        if self.glu:
            gate, up = h.chunk(2, -1)
            h = F.silu(gate) * up
        else:
            h = F.silu(h)
        return self.proj_2(h)


class Block(nn.Module):
    def __init__(self, cfg, q, kv, f):
        super().__init__()
        d = cfg["model_dim"]
        self.attn_norm = RMSNorm(d)
        self.attn = Attention(d, cfg["head_dim"], q, kv, cfg["normalize_qk_projections"],
                              cfg.get("enable_gqa", False))
        self.ffn_norm = RMSNorm(d)
        self.ffn = FeedForward(d, f, cfg["ffn_with_glu"])

    def forward(self, x, rope):
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.ffn(self.ffn_norm(x))


class OpenELM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["model_dim"]
        self.token_embeddings = nn.Embedding(cfg["vocab_size"], d)
        nn.init.normal_(self.token_embeddings.weight, std=d ** -0.5)
        self.layers = nn.ModuleList(Block(cfg, q, kv, f) for q, kv, f in layer_shapes(cfg))
        self.norm = RMSNorm(d)
        self.lm_head = None if cfg["share_input_output_layers"] else nn.Linear(d, cfg["vocab_size"], bias=False)
        self.rope = Rope(cfg["head_dim"], cfg["rope_freq_constant"], cfg["rope_max_length"])

    def forward(self, tokens):  # (B, T) -> (B, T, V)
        x = self.token_embeddings(tokens)
        for layer in self.layers:
            x = layer(x, self.rope)
        x = self.norm(x)
        weight = self.token_embeddings.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, weight)


def lm_loss(logits, targets, z_coef):
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
    targets = targets.reshape(-1)
    ce = F.cross_entropy(logits, targets)
    if z_coef == 0:
        return ce
    return ce + z_coef * logits.logsumexp(-1).square().mean()


def param_count(cfg):
    d, h, v = cfg["model_dim"], cfg["head_dim"], cfg["vocab_size"]
    total = v * d * (1 if cfg["share_input_output_layers"] else 2) + d
    for q, kv, f in layer_shapes(cfg):
        total += d * (q + 2 * kv) * h + q * h * d + (2 * h if cfg["normalize_qk_projections"] else 0)
        total += d * (2 * f if cfg["ffn_with_glu"] else f) + f * d + 2 * d
    return total


def training_flops_per_token(cfg, seq):
    """6 per matmul parameter (the head counted even when tied) plus 12 * T * query width per
    layer, as corenet-rs's flops.rs counts."""
    d, h, v = cfg["model_dim"], cfg["head_dim"], cfg["vocab_size"]
    matmul, attention = v * d, 0
    for q, kv, f in layer_shapes(cfg):
        matmul += d * (q + 2 * kv) * h + q * h * d + d * (2 * f if cfg["ffn_with_glu"] else f) + f * d
        attention += 12 * seq * q * h
    return 6.0 * matmul + attention


SDPA_NAMES = {0: "math", 1: "flash_attention", 2: "efficient_attention", 3: "cudnn_attention",
              4: "overrideable", -1: "error"}


def sdpa_choice(cfg, b, t, dtype, device):
    hq, hkv, _ = layer_shapes(cfg)[0]
    gqa = cfg["enable_gqa"] and hq != hkv
    q = torch.zeros(b, hq, t, cfg["head_dim"], dtype=dtype, device=device)  # (B, Hq, T, D)
    kv = torch.zeros(b, hkv if gqa else hq, t, cfg["head_dim"], dtype=dtype, device=device)
    try:
        return SDPA_NAMES.get(int(torch._fused_sdp_choice(q, kv, kv, is_causal=True, enable_gqa=gqa)), "unknown")
    except Exception as e:  # noqa: BLE001  (an internal API: report, do not fail the run)
        return f"unavailable: {e}"


def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def git_commit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root,
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def apply_set(cfg, item):
    key, sep, text = item.partition("=")
    if not sep or not key.startswith("model."):
        raise SystemExit(f"--set {item!r}: expected model.KEY=VALUE")
    field = key[len("model."):]
    if field not in cfg:
        raise SystemExit(f"--set {item!r}: unknown model key {field!r}")
    try:
        cfg[field] = json.loads(text)
    except json.JSONDecodeError:
        cfg[field] = {"true": True, "false": False}.get(text, text)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="custom")
    p.add_argument("--model-json", help="architecture as JSON (CoreNet field names)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="model.KEY=VALUE")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--split-steps", type=int, default=3)
    p.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--lr", type=float, default=5.3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--enable-gqa", action="store_true",
                   help="share KV heads inside SDPA (enable_gqa) instead of CoreNet's repeat_interleave")
    p.add_argument("--json", help="write the report here")
    args = p.parse_args()
    for name in ("seq", "micro_batch", "steps", "split_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1")

    if args.model_json:
        with open(args.model_json) as f:
            loaded = json.load(f)
        cfg = {**DEFAULTS, **loaded.get("model_config", loaded)}
    else:
        cfg = preset(args.model)
    for item in args.sets:
        apply_set(cfg, item)
    cfg["enable_gqa"] = args.enable_gqa
    if args.seq > cfg["max_context_length"]:
        raise SystemExit(f"--seq {args.seq} exceeds max_context_length {cfg['max_context_length']}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    torch.manual_seed(args.seed)
    model = OpenELM(cfg).to(device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    params = list(model.parameters())
    if dtype == torch.bfloat16:
        model.to(dtype)
        masters = [p.detach().float().clone().requires_grad_(True) for p in params]
    else:
        masters = params
    groups = [{"params": [m for m in masters if m.dim() >= 2], "weight_decay": 0.1},
              {"params": [m for m in masters if m.dim() < 2], "weight_decay": 0.0}]
    optim = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    def batch():
        rows = torch.randint(cfg["vocab_size"], (args.micro_batch, args.seq + 1))
        rows = rows.pin_memory().to(device, non_blocking=True) if cuda else rows
        return rows[:, :-1], rows[:, 1:]  # (B, T) inputs and targets

    def forward(inputs, targets):
        return lm_loss(model(inputs), targets, 1e-4)

    def update():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        if masters is not params:
            for p, m in zip(params, masters):
                m.grad = p.grad.float()
        optim.step()
        model.zero_grad()
        if masters is not params:
            with torch.no_grad():
                for p, m in zip(params, masters):
                    p.copy_(m)

    current = batch()
    for _ in range(args.warmup):
        nxt = batch()
        forward(*current).backward()
        update()
        current = nxt
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    step_times, loss = [], None
    window = time.perf_counter()
    for _ in range(args.steps):
        t0 = time.perf_counter()
        nxt = batch()
        loss = forward(*current)
        loss.backward()
        update()
        current = nxt
        step_times.append(time.perf_counter() - t0)
    final_loss = loss.item()  # the window's one host read
    window_s = time.perf_counter() - window

    phases = []
    for _ in range(args.split_steps):
        nxt = batch()
        sync()
        t0 = time.perf_counter()
        loss = forward(*current)
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        update()
        sync()
        t3 = time.perf_counter()
        phases.append((t1 - t0, t2 - t1, t3 - t2))
        current = nxt

    tokens_per_step = args.micro_batch * args.seq
    step_time = window_s / args.steps
    tps = tokens_per_step / step_time
    fpt = training_flops_per_token(cfg, args.seq)
    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    peak = 989e12 if cuda and "H100" in name and "PCIe" not in name else None
    report = {
        "implementation": "pytorch-eager",
        "command": " ".join([sys.executable, *sys.argv]),
        "git_commit": git_commit(),
        "timestamp": int(time.time()),
        "host": socket.gethostname(),
        "device": f"cuda:{device.index or 0}" if cuda else "cpu",
        "device_name": name,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "model_config": cfg,
        "params": param_count(cfg),
        "seq_len": args.seq,
        "micro_batch": args.micro_batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "split_steps": args.split_steps,
        "precision": args.precision,
        "activation_checkpointing": False,
        "tokens_per_step": tokens_per_step,
        "step_time_s": step_time,
        "step_time_median_s": statistics.median(step_times),
        "tokens_per_s": tps,
        "flops_per_token": fpt,
        "achieved_flops_per_s": fpt * tps,
        "peak_flops_per_s": peak,
        "mfu": fpt * tps / peak if peak else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else peak_rss(),
        "peak_memory_source": "CUDA caching allocator peak" if cuda else "process VmHWM (resident high-water mark)",
        "split": {
            "forward_s": statistics.median(p[0] for p in phases),
            "backward_s": statistics.median(p[1] for p in phases),
            "optimizer_s": statistics.median(p[2] for p in phases),
            "communication_s": 0.0,
            "step_s": statistics.median(sum(p) for p in phases),
        },
        "sdpa_backend": sdpa_choice(cfg, args.micro_batch, args.seq, dtype, device),
        "gqa": "enable_gqa" if args.enable_gqa else "repeat_interleave",
        "rms_norm": "composite",
        "fused_adamw": True,
        "pinned_input": cuda,
        "final_loss": final_loss,
        "step_times_s": step_times,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    print(f"pytorch-eager {args.model} on {report['device']}: step {step_time * 1e3:.2f} ms "
          f"(median {report['step_time_median_s'] * 1e3:.2f} ms), {tps:.0f} tokens/s, "
          f"synced {report['split']['step_s'] * 1e3:.2f} ms = fwd {report['split']['forward_s'] * 1e3:.2f} "
          f"+ bwd {report['split']['backward_s'] * 1e3:.2f} + opt {report['split']['optimizer_s'] * 1e3:.2f}; "
          f"loss {final_loss:.4f}")


if __name__ == "__main__":
    main()
