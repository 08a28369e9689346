#!/usr/bin/env python3
"""An independent reader of a Hugging Face OpenELM folder, in plain torch.

Reads `config.json` (per-layer `num_query_heads` / `num_kv_heads` / `ffn_multipliers` lists) and
`model.safetensors` (or a sharded `model.safetensors.index.json`) with the HF tensor names
(`transformer.layers.N.attn.qkv_proj.weight`, ...), runs the OpenELM forward pass as the HF
remote code defines it, and writes the logits for the given token ids.

It is written from the HF layout alone (it shares no code with corenet-rs or
scripts/openelm_reference.py), so that corenet-rs's exporter is checked by a second reading.

    python scripts/hf_openelm_reader.py FOLDER --ids '[[1, 5, 9], [1, 7, 3]]' --out logits.safetensors

The output holds one tensor, `logits`, of shape (B, T, V), float32.
"""

import argparse
import json
import math
import os

import torch
from safetensors.torch import load_file, save_file

RMS_EPS = 1e-6  # not in config.json; every OpenELM port hard-codes it


def make_divisible(v, divisor):
    """MobileNet rounding: nearest multiple of `divisor` (at least `divisor`), never more than
    10 % below `v`."""
    n = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if n < 0.9 * v:
        n += divisor
    return n


def read_weights(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        return load_file(os.path.join(folder, "model.safetensors"))
    with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    weights = {}
    for shard in shards:
        weights.update(load_file(os.path.join(folder, shard)))
    return weights


def rms_norm(x, weight):
    """x: (..., C); normalised in float32 over the last dim, cast back, then scaled."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + RMS_EPS)
    return y.to(x.dtype) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Reader:
    def __init__(self, folder):
        with open(os.path.join(folder, "config.json")) as f:
            self.cfg = json.load(f)
        assert self.cfg["model_type"] == "openelm", self.cfg["model_type"]
        self.w = {k: v.float() for k, v in read_weights(folder).items()}
        c = self.cfg
        self.layers = c["num_transformer_layers"]
        self.dim = c["model_dim"]
        self.head_dim = c["head_dim"]
        self.q_heads = c["num_query_heads"]
        self.kv_heads = c["num_kv_heads"]
        mults = c["ffn_multipliers"]
        if not isinstance(mults, list):
            mults = [mults]
        if len(mults) != self.layers:
            raise ValueError(f"ffn_multipliers has {len(mults)} values for {self.layers} layers")
        self.ffn_dims = [make_divisible(m * self.dim, c["ffn_dim_divisor"]) for m in mults]
        assert len(self.q_heads) == self.layers and len(self.kv_heads) == self.layers
        for i in range(self.layers):
            p = f"transformer.layers.{i}"
            qkv = self.w[f"{p}.attn.qkv_proj.weight"]
            want = (self.q_heads[i] + 2 * self.kv_heads[i]) * self.head_dim
            assert qkv.shape == (want, self.dim), (p, qkv.shape)
            glu = 2 if c["ffn_with_glu"] else 1
            assert self.w[f"{p}.ffn.proj_1.weight"].shape == (glu * self.ffn_dims[i], self.dim)

    def rope(self, t):
        """cos, sin: (T, D) for positions 0..T-1, rotate-half layout."""
        d = self.head_dim
        inv_freq = 1.0 / (self.cfg["rope_freq_constant"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        pos = torch.arange(t, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos(), emb.sin()

    def attention(self, i, x, cos, sin):
        """x: (B, T, C) -> (B, T, C)."""
        p = f"transformer.layers.{i}.attn"
        b, t, _ = x.shape
        hq, hkv, d = self.q_heads[i], self.kv_heads[i], self.head_dim
        qkv = x @ self.w[f"{p}.qkv_proj.weight"].T  # (B, T, (Hq + 2 Hkv) D)
        qkv = qkv.view(b, t, hq + 2 * hkv, d).transpose(1, 2)  # (B, Hq + 2 Hkv, T, D)
        q, k, v = qkv.split([hq, hkv, hkv], dim=1)
        if self.cfg["normalize_qk_projections"]:
            q = rms_norm(q, self.w[f"{p}.q_norm.weight"])
            k = rms_norm(k, self.w[f"{p}.k_norm.weight"])
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        group = hq // hkv  # query head h reads KV head h // group
        k = k.repeat_interleave(group, dim=1)  # (B, Hq, T, D)
        v = v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)  # (B, Hq, T, T)
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        out = scores.softmax(-1) @ v  # (B, Hq, T, D)
        out = out.transpose(1, 2).reshape(b, t, hq * d)
        return out @ self.w[f"{p}.out_proj.weight"].T

    def ffn(self, i, x):
        p = f"transformer.layers.{i}.ffn"
        h = x @ self.w[f"{p}.proj_1.weight"].T
        if self.cfg["ffn_with_glu"]:
            gate, up = h.chunk(2, dim=-1)
            h = torch.nn.functional.silu(gate) * up
        else:
            h = torch.nn.functional.silu(h)
        return h @ self.w[f"{p}.proj_2.weight"].T

    @torch.no_grad()
    def logits(self, ids):
        """ids: (B, T) int64 -> (B, T, V) float32."""
        x = self.w["transformer.token_embeddings.weight"][ids]  # (B, T, C)
        cos, sin = self.rope(ids.shape[1])
        for i in range(self.layers):
            p = f"transformer.layers.{i}"
            x = x + self.attention(i, rms_norm(x, self.w[f"{p}.attn_norm.weight"]), cos, sin)
            x = x + self.ffn(i, rms_norm(x, self.w[f"{p}.ffn_norm.weight"]))
        x = rms_norm(x, self.w["transformer.norm.weight"])
        if self.cfg["share_input_output_layers"]:
            head = self.w["transformer.token_embeddings.weight"]
        else:
            head = self.w["lm_head.weight"]
        return x @ head.T


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--ids", required=True, help="JSON list of equal-length lists of token ids")
    parser.add_argument("--out", required=True, help="output safetensors file (tensor `logits`)")
    args = parser.parse_args()
    ids = torch.tensor(json.loads(args.ids), dtype=torch.int64)
    logits = Reader(args.folder).logits(ids)
    save_file({"logits": logits.contiguous()}, args.out)


if __name__ == "__main__":
    main()
