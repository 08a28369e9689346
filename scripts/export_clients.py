#!/usr/bin/env python3
"""Runs corenet's exports in the clients people use, none of them written here, and prints one
JSON object of what each client computed. The Rust tests (tests/export_clients.rs) compare it
with corenet's own numbers; scripts/llama_cpp_check.sh records the llama.cpp run.

  transformers FOLDER --batch B.safetensors --prompt-ids 1,2,3 --max-new-tokens N
      AutoTokenizer + AutoModelForCausalLM(trust_remote_code=True), offline: the max |logit|
      difference from corenet's logits stored in B (input_ids, logits), greedy new ids with and
      without the KV cache, and the tokenizer's ids for --prompt-text.
  mlx FOLDER --prompt-ids 1,2,3 --max-new-tokens N [--ppl-ids FILE]
      mlx_lm.load + greedy generate_step; with --ppl-ids (a JSON list of id windows) the
      perplexity of those windows.
  gguf FILE --hf FOLDER
      gguf.GGUFReader: the metadata llama.cpp reads, and every tensor checked against the HF
      folder's weights (f32/f16 equal after conversion, Q8_0 bytes equal to gguf's quantizer).
  mlx-perplexity FOLDER... --data FILE.jsonl [--max-documents N] [--seq-len L]
      mlx-lm's perplexity of each folder on a jsonl shard's "text" documents, windowed as
      `corenet eval perplexity` windows them (BOS + ids + EOS per document, concatenated, windows
      of L inputs overlapping by one id), so the f32 export must give corenet's number.
  llama-cpp FILE --prompt-ids 1,2,3 --max-new-tokens N
      llama_cpp.Llama: greedy new ids from the prompt ids.
  lm-eval FOLDER --items FILE.jsonl --workdir DIR
      lm_eval.simple_evaluate with the hf backend on a local PIQA-layout task written as YAML.
"""
import argparse
import json
import math
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def ids_arg(text):
    return [int(x) for x in text.split(",") if x]


def until_eos(ids, eos):
    out = []
    for i in ids:
        if i == eos:
            break
        out.append(i)
    return out


def run_transformers(args):
    import torch
    import transformers
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(
        args.folder, trust_remote_code=True, dtype=torch.float32
    )
    model.eval()
    batch = load_file(args.batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"]).logits
    diff = (logits - batch["logits"]).abs().max().item()
    prompt = torch.tensor([args.prompt_ids])
    greedy = {}
    for cache in (True, False):
        with torch.no_grad():
            out = model.generate(
                prompt,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                use_cache=cache,
                pad_token_id=tokenizer.pad_token_id,
            )
        greedy[cache] = until_eos(out[0, prompt.shape[1]:].tolist(), tokenizer.eos_token_id)
    report = {
        "client": f"transformers {transformers.__version__}",
        "max_abs_logit_diff": diff,
        "logits_shape": list(logits.shape),
        "greedy_ids": greedy[True],
        "greedy_ids_no_cache": greedy[False],
        "tokenizer_class": type(tokenizer).__name__,
        "special": {
            "bos": tokenizer.bos_token,
            "eos": tokenizer.eos_token,
            "unk": tokenizer.unk_token,
            "pad": tokenizer.pad_token,
        },
    }
    if args.prompt_text is not None:
        report["prompt_text_ids"] = tokenizer(args.prompt_text).input_ids
    print(json.dumps(report))


def run_mlx(args):
    import importlib.metadata as md

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    mx.set_default_device(mx.cpu)
    model, tokenizer = load(args.folder, tokenizer_config={"trust_remote_code": True})
    quantized = sum(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
    prompt = mx.array(args.prompt_ids)
    new = []
    greedy = lambda logprobs: mx.argmax(logprobs, axis=-1)
    for token, _ in generate_step(prompt, model, max_tokens=args.max_new_tokens, sampler=greedy):
        token = int(token)
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    report = {
        "client": f"mlx {md.version('mlx')}, mlx-lm {md.version('mlx-lm')}",
        "greedy_ids": new,
        "quantized_modules": quantized,
    }
    if args.ppl_ids:
        with open(args.ppl_ids) as f:
            windows = json.load(f)
        nll, count = 0.0, 0
        for window in windows:
            x = mx.array([window])
            logits = model(x[:, :-1]).astype(mx.float32)
            losses = nn.losses.cross_entropy(logits, x[:, 1:], reduction="sum")
            nll += float(losses)
            count += len(window) - 1
        report["perplexity"] = math.exp(nll / count)
        report["ppl_tokens"] = count
    print(json.dumps(report))


def run_mlx_perplexity(args):
    import importlib.metadata as md

    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm.utils import load_model
    from tokenizers import Tokenizer

    mx.set_default_device(mx.cpu)
    first = args.folders[0]
    with open(os.path.join(first, "config.json")) as f:
        config = json.load(f)
    tokenizer = Tokenizer.from_file(os.path.join(first, "tokenizer.json"))
    stream = []
    with open(args.data) as f:
        for n, line in enumerate(f):
            if args.max_documents is not None and n >= args.max_documents:
                break
            text = json.loads(line)["text"]
            ids = tokenizer.encode(text, add_special_tokens=False).ids
            stream += [config["bos_token_id"]] + ids + [config["eos_token_id"]]
    seq = args.seq_len or config["max_context_length"]
    windows = [stream[i : i + seq + 1] for i in range(0, len(stream) - 1, seq)]
    windows = [w for w in windows if len(w) > 1]
    results = []
    for folder in args.folders:
        model, _ = load_model(__import__("pathlib").Path(folder))
        nll, count = 0.0, 0
        for w in windows:
            x = mx.array([w])
            logits = model(x[:, :-1]).astype(mx.float32)
            nll += float(nn.losses.cross_entropy(logits, x[:, 1:], reduction="sum"))
            count += len(w) - 1
        size = sum(
            os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors")
        )
        results.append({"folder": folder, "perplexity": math.exp(nll / count), "tokens": count, "weight_bytes": size})
    print(json.dumps({"client": f"mlx {md.version('mlx')}, mlx-lm {md.version('mlx-lm')}", "results": results}))


def run_gguf(args):
    import importlib.metadata as md

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import quantize
    from safetensors.numpy import load_file

    reader = GGUFReader(args.file)

    def field(name):
        f = reader.fields[name]
        if len(f.types) == 1 and f.types[0].name == "STRING":
            return bytes(f.parts[f.data[0]]).decode()
        values = [f.parts[i].tolist() for i in f.data]
        values = [v[0] if len(v) == 1 else v for v in values]
        if f.types[0].name == "ARRAY":
            if f.types[-1].name == "STRING":
                return [bytes(f.parts[i]).decode() for i in f.data]
            return values
        return values[0]

    keys = [
        "general.architecture",
        "general.file_type",
        "openelm.context_length",
        "openelm.embedding_length",
        "openelm.block_count",
        "openelm.feed_forward_length",
        "openelm.attention.head_count",
        "openelm.attention.head_count_kv",
        "openelm.attention.key_length",
        "openelm.attention.value_length",
        "openelm.attention.layer_norm_rms_epsilon",
        "openelm.rope.dimension_count",
        "openelm.rope.freq_base",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
    ]
    metadata = {k: field(k) for k in keys if k in reader.fields}
    tokens = field("tokenizer.ggml.tokens")
    hf = load_file(os.path.join(args.hf, "model.safetensors"))
    ffn = metadata["openelm.feed_forward_length"]

    def expected(name):
        if name == "token_embd.weight":
            return hf["transformer.token_embeddings.weight"]
        if name == "output_norm.weight":
            return hf["transformer.norm.weight"]
        _, i, part, _ = name.split(".")
        i = int(i)
        p = f"transformer.layers.{i}"
        table = {
            "attn_norm": f"{p}.attn_norm.weight",
            "attn_qkv": f"{p}.attn.qkv_proj.weight",
            "attn_q_norm": f"{p}.attn.q_norm.weight",
            "attn_k_norm": f"{p}.attn.k_norm.weight",
            "attn_output": f"{p}.attn.out_proj.weight",
            "ffn_norm": f"{p}.ffn_norm.weight",
            "ffn_down": f"{p}.ffn.proj_2.weight",
        }
        if part in table:
            return hf[table[part]]
        proj_1 = hf[f"{p}.ffn.proj_1.weight"]
        return proj_1[: ffn[i]] if part == "ffn_gate" else proj_1[ffn[i]:]

    worst, checked, types = 0.0, 0, {}
    for t in reader.tensors:
        want = expected(t.name).astype(np.float32)
        kind = t.tensor_type
        types[kind.name] = types.get(kind.name, 0) + 1
        shape = [int(d) for d in reversed(t.shape.tolist())]
        if shape != list(want.shape):
            raise SystemExit(f"{t.name}: shape {shape}, expected {list(want.shape)}")
        if kind == GGMLQuantizationType.Q8_0:
            ours = np.asarray(t.data).reshape(-1).view(np.uint8)
            theirs = quantize(want, GGMLQuantizationType.Q8_0).reshape(-1).view(np.uint8)
            if not np.array_equal(ours, theirs):
                raise SystemExit(f"{t.name}: Q8_0 bytes differ from gguf's quantizer")
        else:
            data = np.asarray(t.data).astype(np.float32).reshape(want.shape)
            ref = want.astype(np.float16).astype(np.float32) if kind == GGMLQuantizationType.F16 else want
            worst = max(worst, float(np.abs(data - ref).max()))
        checked += 1
    print(
        json.dumps(
            {
                "client": f"gguf {md.version('gguf')}",
                "metadata": metadata,
                "tokens": len(tokens),
                "tensor_types": types,
                "tensors_checked": checked,
                "max_abs_diff_unquantized": worst,
            }
        )
    )


def run_llama_cpp(args):
    import importlib.metadata as md

    from llama_cpp import Llama

    llm = Llama(model_path=args.file, n_ctx=args.n_ctx, n_threads=2, verbose=False, seed=0)
    eos = llm.token_eos()
    new = []
    llm.reset()
    llm.eval(args.prompt_ids)
    for _ in range(args.max_new_tokens):
        token = int(llm.sample(temp=0.0, top_k=1))
        if token == eos:
            break
        new.append(token)
        llm.eval([token])
    print(json.dumps({"client": f"llama-cpp-python {md.version('llama-cpp-python')}", "greedy_ids": new}))


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {items}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def run_lm_eval(args):
    import importlib.metadata as md

    import lm_eval
    from lm_eval.tasks import TaskManager

    os.makedirs(args.workdir, exist_ok=True)
    name = "corenet_local_piqa"
    with open(os.path.join(args.workdir, f"{name}.yaml"), "w") as f:
        f.write(TASK_YAML.format(name=name, items=os.path.abspath(args.items)))
    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={args.folder},trust_remote_code=True,dtype=float32",
        tasks=[name],
        task_manager=TaskManager(include_path=args.workdir),
        batch_size=1,
        device="cpu",
    )
    scores = results["results"][name]
    print(
        json.dumps(
            {
                "client": f"lm-eval {md.version('lm-eval')}",
                "acc": scores["acc,none"],
                "acc_norm": scores["acc_norm,none"],
                "items": results["n-samples"][name]["effective"],
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="client", required=True)
    t = sub.add_parser("transformers")
    t.add_argument("folder")
    t.add_argument("--batch", required=True)
    t.add_argument("--prompt-ids", type=ids_arg, required=True)
    t.add_argument("--prompt-text")
    t.add_argument("--max-new-tokens", type=int, default=16)
    m = sub.add_parser("mlx")
    m.add_argument("folder")
    m.add_argument("--prompt-ids", type=ids_arg, required=True)
    m.add_argument("--max-new-tokens", type=int, default=16)
    m.add_argument("--ppl-ids")
    g = sub.add_parser("gguf")
    g.add_argument("file")
    g.add_argument("--hf", required=True)
    q = sub.add_parser("mlx-perplexity")
    q.add_argument("folders", nargs="+")
    q.add_argument("--data", required=True)
    q.add_argument("--max-documents", type=int)
    q.add_argument("--seq-len", type=int)
    c = sub.add_parser("llama-cpp")
    c.add_argument("file")
    c.add_argument("--prompt-ids", type=ids_arg, required=True)
    c.add_argument("--max-new-tokens", type=int, default=16)
    c.add_argument("--n-ctx", type=int, default=256)
    e = sub.add_parser("lm-eval")
    e.add_argument("folder")
    e.add_argument("--items", required=True)
    e.add_argument("--workdir", required=True)
    args = parser.parse_args()
    runners = {
        "transformers": run_transformers,
        "mlx": run_mlx,
        "mlx-perplexity": run_mlx_perplexity,
        "gguf": run_gguf,
        "llama-cpp": run_llama_cpp,
        "lm-eval": run_lm_eval,
    }
    runners[args.client](args)


if __name__ == "__main__":
    sys.exit(main())
