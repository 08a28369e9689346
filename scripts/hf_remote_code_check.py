#!/usr/bin/env python3
"""Checks our Hugging Face remote code for OpenELM (crates/export/hf/*.py) against the
independent plain-PyTorch oracle in scripts/openelm_reference.py.

For a tiny random OpenELM with tied embeddings (openelm_reference.CONFIG) and an untied variant,
it writes an HF folder the way corenet-rs's exporter does (config.json with the per-layer lists
and a local auto_map, model.safetensors with {"format": "pt"}, generation_config.json, the two
.py files), loads it offline with AutoModelForCausalLM(trust_remote_code=True), and asserts:

- no missing / unexpected / mismatched keys; the head is tied to the embedding when it should be;
- float32 logits match the oracle within 1e-5 (max abs), also past rope_max_length;
- a cached prefill + multi-token continuation matches the full forward;
- greedy generate gives the same 20 tokens with and without the KV cache, and the oracle's;
- a right-padded batch (with and without attention_mask) gives the unpadded rows' logits;
- a left-padded batch generates what each prompt generates alone;
- the config round-trips through save_pretrained, and a saved model reloads.

Run: .venv-ref/bin/python scripts/hf_remote_code_check.py   (exit status 1 on any failure)
"""

import json
import os
import shutil
import sys
import tempfile
import traceback

os.environ["HF_HUB_OFFLINE"] = "1"  # everything must load from the folder
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# transformers copies remote code into a modules cache; keep ours private and temporary.
_MODULES = tempfile.TemporaryDirectory(prefix="hf-modules-")
os.environ["HF_MODULES_CACHE"] = _MODULES.name

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REMOTE_CODE = os.path.join(ROOT, "crates", "export", "hf")
sys.path.insert(0, HERE)
import openelm_reference as ref  # noqa: E402

import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

transformers.utils.logging.disable_progress_bar()

TOL = 1e-5
GEN_TOKENS = 20
V5 = int(transformers.__version__.split(".")[0]) >= 5
DTYPE_KWARG = "dtype" if V5 else "torch_dtype"
CACHE_NAME = "cache" if V5 else "past_key_values"  # the cache argument / output field

# A second architecture: untied head, 4 layers, another FFN range and GQA group size.
UNTIED = dict(ref.CONFIG, num_transformer_layers=4, ffn_multipliers=[1.0, 3.0],
              share_input_output_layers=False)

failures = []
summary = []


def check(ok, message):
    if not ok:
        failures.append(message)
        print(f"FAIL: {message}")
    return ok


def per_layer_ffn(cfg):
    """ffn_multipliers expanded to one value per layer, as corenet-rs writes them."""
    lo, hi = cfg["ffn_multipliers"]
    n = cfg["num_transformer_layers"]
    points = [lo + i * (hi - lo) / (n - 1) for i in range(n)]
    points[-1] = hi
    return [round(p, 2) for p in points]


def hf_config_json(cfg):
    """config.json in the form crates/model/src/hf.rs writes, with a local auto_map."""
    shapes = ref.layer_shapes(cfg)
    keys = ["vocab_size", "max_context_length", "num_transformer_layers", "model_dim", "head_dim",
            "qkv_multipliers", "num_gqa_groups", "ffn_with_glu", "ffn_dim_divisor",
            "activation_fn_name", "normalization_layer_name", "normalize_qk_projections",
            "share_input_output_layers", "rope_freq_constant", "rope_max_length"]
    out = {
        "architectures": ["OpenELMForCausalLM"],
        "model_type": "openelm",
        "auto_map": {
            "AutoConfig": "configuration_openelm.OpenELMConfig",
            "AutoModelForCausalLM": "modeling_openelm.OpenELMForCausalLM",
        },
    }
    out.update({k: cfg[k] for k in keys})
    out.update({
        "num_query_heads": [q for q, _, _ in shapes],
        "num_kv_heads": [kv for _, kv, _ in shapes],
        "ffn_multipliers": per_layer_ffn(cfg),
        "initializer_range": 0.02,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.39.3",
    })
    return out


def make_weights(cfg, seed):
    """Oracle weights (HF names), rounded to float32; plus lm_head.weight when untied."""
    g = torch.Generator().manual_seed(seed)
    w = ref.random_weights(cfg, g)
    if not cfg["share_input_output_layers"]:
        w["lm_head.weight"] = torch.randn(cfg["vocab_size"], cfg["model_dim"], generator=g,
                                          dtype=torch.float64) * cfg["model_dim"] ** -0.5
    return {k: v.to(torch.float32).contiguous() for k, v in w.items()}


def write_folder(folder, cfg, weights):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config_json(cfg), f, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2,
                   "transformers_version": "4.39.3"}, f, indent=2)
    save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    for name in ("configuration_openelm.py", "modeling_openelm.py"):
        shutil.copy(os.path.join(REMOTE_CODE, name), folder)


def oracle_logits(ids, weights, cfg):
    """The reference forward pass in float64 on the float32 weights; ids: (B, T) -> (B, T, V).
    Uses lm_head.weight when present (the reference itself is tied-only)."""
    w = {k: v.to(torch.float64) for k, v in weights.items()}
    x = w["transformer.token_embeddings.weight"][ids]
    for i, (q, kv, _) in enumerate(ref.layer_shapes(cfg)):
        p = f"transformer.layers.{i}"
        x = x + ref.attention(ref.rms_norm(x, w[f"{p}.attn_norm.weight"]), w, p, q, kv, cfg)
        x = x + ref.feed_forward(ref.rms_norm(x, w[f"{p}.ffn_norm.weight"]), w, p)
    x = ref.rms_norm(x, w["transformer.norm.weight"])
    head = w.get("lm_head.weight", w["transformer.token_embeddings.weight"])
    return x @ head.T


def oracle_greedy(prompt, weights, cfg, steps):
    ids = prompt.clone()
    for _ in range(steps):
        nxt = oracle_logits(ids, weights, cfg)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids[:, prompt.shape[1]:]


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def load(folder):
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True, **{DTYPE_KWARG: torch.float32})
    return model.eval(), info


def check_loading(name, model, info, cfg):
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        check(not info.get(kind), f"{name}: {kind} {info.get(kind)}")
    tied = model.lm_head.weight is model.transformer.token_embeddings.weight
    if cfg["share_input_output_layers"]:
        check(tied, f"{name}: lm_head is not tied to transformer.token_embeddings")
    else:
        check(not tied, f"{name}: lm_head is tied though share_input_output_layers is false")
    dims = [layer.ffn.proj_2.weight.shape[1] for layer in model.transformer.layers]
    check(dims == [f for _, _, f in ref.layer_shapes(cfg)], f"{name}: FFN widths {dims}")


def check_logits(name, model, weights, cfg, g):
    v = cfg["vocab_size"]
    worst = 0.0
    # (2, 24) as in the reference fixture, and one sequence longer than rope_max_length.
    for shape in ((2, 24), (1, cfg["rope_max_length"] + 16)):
        ids = torch.randint(0, v, shape, generator=g)
        with torch.no_grad():
            got = model(ids).logits
        d = max_diff(got, oracle_logits(ids, weights, cfg).to(torch.float32))
        check(d <= TOL, f"{name}: logits {tuple(shape)} differ from the oracle by {d:.2e}")
        worst = max(worst, d)
    summary.append(f"{name}: max |logits - oracle| = {worst:.2e}")
    return worst


def check_cached_continuation(name, model, cfg, g):
    """Prefill 16 tokens into a cache, then feed 8 at once (cache + multi-token mask path)."""
    ids = torch.randint(0, cfg["vocab_size"], (2, 24), generator=g)
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :16], use_cache=True)
        cache = getattr(first, CACHE_NAME)
        rest = model(ids[:, 16:], **{CACHE_NAME: cache}, use_cache=True).logits
    d = max(max_diff(first.logits, full[:, :16]), max_diff(rest, full[:, 16:]))
    check(d <= TOL, f"{name}: cached continuation differs from the full forward by {d:.2e}")
    summary.append(f"{name}: max |cached - full| = {d:.2e}")


def greedy(model, prompt, use_cache, **kwargs):
    out = model.generate(prompt, do_sample=False, max_new_tokens=GEN_TOKENS,
                         min_new_tokens=GEN_TOKENS, use_cache=use_cache, pad_token_id=0, **kwargs)
    return out[:, prompt.shape[1]:]


def check_generate(name, model, weights, cfg, g):
    prompt = torch.randint(3, cfg["vocab_size"], (1, 8), generator=g)
    with torch.no_grad():
        cached = greedy(model, prompt, True)
        uncached = greedy(model, prompt, False)
    check(cached.shape[1] == GEN_TOKENS, f"{name}: generated {cached.shape[1]} tokens")
    check(torch.equal(cached, uncached),
          f"{name}: greedy tokens differ with/without cache:\n {cached.tolist()}\n {uncached.tolist()}")
    # The oracle cannot suppress EOS as min_new_tokens does; compare only up to its first EOS.
    expected = oracle_greedy(prompt, weights, cfg, GEN_TOKENS)
    stop = (expected[0] == 2).nonzero()
    n = int(stop[0]) if len(stop) else GEN_TOKENS
    check(torch.equal(cached[:, :n], expected[:, :n]),
          f"{name}: greedy tokens differ from the oracle's:\n {cached.tolist()}\n {expected.tolist()}")
    summary.append(f"{name}: greedy {GEN_TOKENS} tokens, cache == no cache == oracle ({n} compared)")


def check_right_padding(name, model, cfg, g):
    """lm-eval's hf backend right-pads batches; real positions must not see the padding."""
    lengths = (24, 15, 7)
    rows = [torch.randint(0, cfg["vocab_size"], (1, n), generator=g) for n in lengths]
    batch = torch.zeros(len(rows), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, row in enumerate(rows):
        batch[i, : row.shape[1]] = row[0]
        mask[i, : row.shape[1]] = 1
    worst = 0.0
    with torch.no_grad():
        padded = {"mask": model(batch, attention_mask=mask).logits, "no mask": model(batch).logits}
        for i, row in enumerate(rows):
            alone = model(row).logits[0]
            for kind, logits in padded.items():
                d = max_diff(logits[i, : row.shape[1]], alone)
                check(d <= TOL, f"{name}: right-padded row {i} ({kind}) differs by {d:.2e}")
                worst = max(worst, d)
    summary.append(f"{name}: max |right-padded - alone| = {worst:.2e}")


def check_left_padding(name, model, cfg, g):
    """Batched generation left-pads; each row must generate what it generates alone."""
    prompts = [torch.randint(3, cfg["vocab_size"], (1, n), generator=g) for n in (9, 5)]
    width = max(p.shape[1] for p in prompts)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for i, p in enumerate(prompts):
        batch[i, width - p.shape[1]:] = p[0]
        mask[i, width - p.shape[1]:] = 1
    with torch.no_grad():
        together = greedy(model, batch, True, attention_mask=mask)
        for i, p in enumerate(prompts):
            alone = greedy(model, p, True)
            check(torch.equal(together[i], alone[0]),
                  f"{name}: left-padded row {i} generates {together[i].tolist()}, alone {alone[0].tolist()}")
    summary.append(f"{name}: left-padded batched generate == per-prompt generate")


def check_config_round_trip(name, model, cfg, tmp):
    config = model.config
    check(config.tie_word_embeddings == cfg["share_input_output_layers"],
          f"{name}: tie_word_embeddings {config.tie_word_embeddings}")
    check((config.bos_token_id, config.eos_token_id) == (1, 2),
          f"{name}: bos/eos {(config.bos_token_id, config.eos_token_id)}")
    folder = os.path.join(tmp, "config-round-trip")
    config.save_pretrained(folder)
    again = type(config).from_pretrained(folder)
    a, b = config.to_dict(), again.to_dict()
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "_name_or_path")
    check(not differing, f"{name}: config keys change in a save/load round trip: {differing}")
    with open(os.path.join(tmp, "model", "config.json")) as f:
        written = json.load(f)
    for key in ("num_query_heads", "num_kv_heads", "ffn_multipliers"):
        check(getattr(config, key) == written[key], f"{name}: {key} {getattr(config, key)}")


def check_save_reload(name, model, cfg, tmp, g):
    folder = os.path.join(tmp, "saved")
    model.save_pretrained(folder)
    keys = set(load_file(os.path.join(folder, "model.safetensors")))
    check(("lm_head.weight" in keys) != cfg["share_input_output_layers"],
          f"{name}: saved lm_head.weight present={'lm_head.weight' in keys}")
    for py in ("configuration_openelm.py", "modeling_openelm.py"):
        if not os.path.exists(os.path.join(folder, py)):  # older versions may not copy code
            shutil.copy(os.path.join(REMOTE_CODE, py), folder)
    again, info = load(folder)
    check(not info.get("missing_keys") and not info.get("unexpected_keys"),
          f"{name}: reloading the saved model: {info}")
    ids = torch.randint(0, cfg["vocab_size"], (1, 12), generator=g)
    with torch.no_grad():
        d = max_diff(again(ids).logits, model(ids).logits)
    check(d == 0.0, f"{name}: reloaded model's logits differ by {d:.2e}")


def run_case(name, cfg, seed):
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "model")
        os.makedirs(folder)
        weights = make_weights(cfg, seed)
        write_folder(folder, cfg, weights)
        model, info = load(folder)
        check(type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "OpenELMConfig",
              f"{name}: AutoConfig did not resolve to OpenELMConfig")
        g = torch.Generator().manual_seed(seed + 1)
        check_loading(name, model, info, cfg)
        check_logits(name, model, weights, cfg, g)
        check_cached_continuation(name, model, cfg, g)
        check_generate(name, model, weights, cfg, g)
        check_right_padding(name, model, cfg, g)
        check_left_padding(name, model, cfg, g)
        check_config_round_trip(name, model, cfg, tmp)
        check_save_reload(name, model, cfg, tmp, g)


def main():
    torch.manual_seed(0)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name, cfg, seed in (("tied", ref.CONFIG, 1234), ("untied", UNTIED, 4321)):
        try:
            run_case(name, cfg, seed)
        except Exception:  # report, keep checking the other case, fail at the end
            traceback.print_exc()
            failures.append(f"{name}: raised {sys.exc_info()[1]!r}")
    print("\n".join(summary))
    if failures:
        print(f"hf_remote_code_check: {len(failures)} failure(s)", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print("hf_remote_code_check: all checks passed")


if __name__ == "__main__":
    main()
