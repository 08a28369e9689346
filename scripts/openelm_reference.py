#!/usr/bin/env python3
"""Independent OpenELM forward pass in plain PyTorch, written from corenet-spec.md §1 and
openelm-reference.md §2, used as the numerical oracle for the Rust model.

It derives the per-layer shapes itself (linspace, round to 2 decimals, make_divisible with the
10 % rule), draws random weights with HF OpenELM names, runs a forward pass in float64 and
float32, and writes:

  <out>/openelm_tiny.json               the config (CoreNet field names)
  <out>/openelm_tiny.safetensors        weights (float32)
  <out>/openelm_tiny_io.safetensors     input_ids (int64) and logits (float32, computed in f64)

Usage: scripts/openelm_reference.py --out crates/model/tests/fixtures
"""
import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

CONFIG = {
    "vocab_size": 97,
    "max_context_length": 64,
    "num_transformer_layers": 3,
    "model_dim": 64,
    "head_dim": 16,
    "qkv_multipliers": [0.5, 1.0],
    "num_gqa_groups": 2,
    "ffn_multipliers": [0.5, 2.0],
    "ffn_with_glu": True,
    "ffn_dim_divisor": 16,
    "activation_fn_name": "swish",
    "normalization_layer_name": "rms_norm",
    "normalize_qk_projections": True,
    "share_input_output_layers": True,
    "rope_freq_constant": 10000.0,
    "rope_max_length": 64,
    "padding_index": None,
}
EPS = 1e-6


def make_divisible(v, divisor, min_value=None):
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def layer_shapes(cfg):
    n, d = cfg["num_transformer_layers"], cfg["model_dim"]

    def multipliers(m):
        if isinstance(m, (int, float)):
            return [float(m)] * n
        lo, hi = m
        if n == 1:
            return [round(lo, 2)]
        step = (hi - lo) / (n - 1)
        values = [i * step + lo for i in range(n)]
        values[-1] = hi
        return [round(v, 2) for v in values]

    alphas = multipliers(cfg["qkv_multipliers"])
    betas = multipliers(cfg["ffn_multipliers"])
    shapes = []
    for a, b in zip(alphas, betas):
        q_dim = int(make_divisible(d * a, cfg["head_dim"] * cfg["num_gqa_groups"]))
        q = q_dim // cfg["head_dim"]
        shapes.append((q, q // cfg["num_gqa_groups"], int(make_divisible(b * d, cfg["ffn_dim_divisor"]))))
    return shapes


def random_weights(cfg, generator):
    d, h, v, n = cfg["model_dim"], cfg["head_dim"], cfg["vocab_size"], cfg["num_transformer_layers"]
    res_std = d ** -0.5 * (2 * n) ** -0.5

    def normal(rows, cols, std):
        return torch.randn(rows, cols, generator=generator, dtype=torch.float64) * std

    def norm_weight(size):
        # Not all ones, so that a misplaced norm weight shows up in the logits.
        return 1.0 + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)

    w = {"transformer.token_embeddings.weight": normal(v, d, d ** -0.5)}
    for i, (q, kv, f) in enumerate(layer_shapes(cfg)):
        p = f"transformer.layers.{i}"
        w[f"{p}.attn_norm.weight"] = norm_weight(d)
        w[f"{p}.attn.qkv_proj.weight"] = normal((q + 2 * kv) * h, d, d ** -0.5)
        w[f"{p}.attn.q_norm.weight"] = norm_weight(h)
        w[f"{p}.attn.k_norm.weight"] = norm_weight(h)
        w[f"{p}.attn.out_proj.weight"] = normal(d, q * h, res_std)
        w[f"{p}.ffn_norm.weight"] = norm_weight(d)
        w[f"{p}.ffn.proj_1.weight"] = normal(2 * f, d, d ** -0.5)
        w[f"{p}.ffn.proj_2.weight"] = normal(d, f, res_std)
    w["transformer.norm.weight"] = norm_weight(d)
    return w


def rms_norm(x, weight):
    xf = x.to(torch.float32) if x.dtype != torch.float64 else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)
    return y.to(x.dtype) * weight


def rope(x, base):
    # x: [B, H, T, D]; rotate-half over the full head dim.
    dim, t = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=x.dtype) / dim))
    theta = torch.outer(torch.arange(t, dtype=x.dtype), inv_freq)
    emb = torch.cat([theta, theta], dim=-1)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return x * emb.cos() + torch.cat([-x2, x1], dim=-1) * emb.sin()


def attention(x, w, p, q, kv, cfg):
    b, t, _ = x.shape
    h = cfg["head_dim"]
    qkv = (x @ w[f"{p}.attn.qkv_proj.weight"].T).reshape(b, t, q + 2 * kv, h).transpose(1, 2)
    qs, ks, vs = qkv[:, :q], qkv[:, q:q + kv], qkv[:, q + kv:]
    qs = rms_norm(qs, w[f"{p}.attn.q_norm.weight"])
    ks = rms_norm(ks, w[f"{p}.attn.k_norm.weight"])
    qs, ks = rope(qs, cfg["rope_freq_constant"]), rope(ks, cfg["rope_freq_constant"])
    groups = q // kv
    ks = ks.repeat_interleave(groups, dim=1)
    vs = vs.repeat_interleave(groups, dim=1)
    scores = qs @ ks.transpose(-1, -2) / math.sqrt(h)
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
    out = (probs @ vs).transpose(1, 2).reshape(b, t, q * h)
    return out @ w[f"{p}.attn.out_proj.weight"].T


def feed_forward(x, w, p):
    gate, up = (x @ w[f"{p}.ffn.proj_1.weight"].T).chunk(2, dim=-1)
    return (torch.nn.functional.silu(gate) * up) @ w[f"{p}.ffn.proj_2.weight"].T


def forward(ids, w, cfg):
    x = w["transformer.token_embeddings.weight"][ids]
    for i, (q, kv, _) in enumerate(layer_shapes(cfg)):
        p = f"transformer.layers.{i}"
        x = x + attention(rms_norm(x, w[f"{p}.attn_norm.weight"]), w, p, q, kv, cfg)
        x = x + feed_forward(rms_norm(x, w[f"{p}.ffn_norm.weight"]), w, p)
    x = rms_norm(x, w["transformer.norm.weight"])
    return x @ w["transformer.token_embeddings.weight"].T


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    weights = random_weights(CONFIG, generator)
    # The model is evaluated on the float32-rounded weights, in float64, so the fixture's logits
    # carry no float32 rounding of their own.
    weights32 = {k: v.to(torch.float32).contiguous() for k, v in weights.items()}
    weights64 = {k: v.to(torch.float64) for k, v in weights32.items()}
    ids = torch.randint(0, CONFIG["vocab_size"], (2, 24), generator=generator, dtype=torch.int64)
    logits = forward(ids, weights64, CONFIG).to(torch.float32).contiguous()
    check = forward(ids, weights32, CONFIG)
    drift = ((check - logits).abs().max() / logits.abs().max()).item()
    assert drift < 1e-5, f"float32 forward drifts {drift} from float64"
    with open(os.path.join(args.out, "openelm_tiny.json"), "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    save_file(weights32, os.path.join(args.out, "openelm_tiny.safetensors"), metadata={"format": "pt"})
    save_file({"input_ids": ids, "logits": logits}, os.path.join(args.out, "openelm_tiny_io.safetensors"))
    print(f"layer shapes (q, kv, ffn): {layer_shapes(CONFIG)}; f32 drift vs f64 {drift:.2e}")


if __name__ == "__main__":
    main()
