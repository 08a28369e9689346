#!/usr/bin/env python3
"""The HF PEFT library on corenet's exports, as the oracle of corenet's LoRA/DoRA
(crates/train/tests/peft_parity.rs). Nothing here is corenet code: transformers loads the HF
export of the base (its modeling code runs under trust_remote_code), peft applies the adapters.

  python peft_reference.py --base HF_FOLDER --adapter PEFT_FOLDER --batch IO.safetensors \
      --out OUT.safetensors [--merged HF_FOLDER] [--dora]

IO.safetensors holds input_ids (B, T) and targets (B, T). OUT.safetensors receives:
  logits                     PeftModel.from_pretrained(base, adapter) on input_ids (eval mode)
  loss                       mean cross-entropy of those logits against targets
  grad.<name>                d loss / d adapter tensor, under corenet's names
  fresh_magnitude.<module>   (DoRA) the magnitude vectors get_peft_model initialises on this base
  fresh_b_max, fresh_a_bound_ratio   get_peft_model's fresh init: max |lora_B| of the linears
                             (0) and max |lora_A| / (1/sqrt(in)) (<= 1)
  merged_logits              (--merged) transformers on corenet's merged export
and prints a JSON line with the client versions.
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file


def load_base(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=True, dtype=torch.float32
    )
    return model


def corenet_name(peft_name):
    """base_model.model.X.lora_A.default.weight -> X.lora_A.weight (corenet's names, which are
    also the names peft's save_pretrained writes: the magnitude without `.weight`)."""
    name = peft_name.removeprefix("base_model.model.").replace(".default", "")
    return name.replace("lora_magnitude_vector.weight", "lora_magnitude_vector")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--batch", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--merged")
    args = parser.parse_args()

    import peft
    import transformers
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(0)
    io = load_file(args.batch)
    ids, targets = io["input_ids"], io["targets"]
    out = {}

    model = PeftModel.from_pretrained(load_base(args.base), args.adapter, is_trainable=True)
    model.eval()  # dropout off: the comparison is of the deterministic forward
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    out["logits"] = logits.detach().contiguous()
    out["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            out["grad." + corenet_name(name)] = p.grad.detach().contiguous()

    # A fresh get_peft_model on the same base with the exported config: its initialisation.
    with open(os.path.join(args.adapter, "adapter_config.json")) as f:
        saved = json.load(f)
    config = LoraConfig(
        r=saved["r"],
        lora_alpha=saved["lora_alpha"],
        lora_dropout=saved["lora_dropout"],
        target_modules=saved["target_modules"],
        use_dora=saved["use_dora"],
        use_rslora=saved["use_rslora"],
    )
    fresh = get_peft_model(load_base(args.base), config)
    b_max, a_ratio = 0.0, 0.0
    for name, module in fresh.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight
            a_ratio = max(a_ratio, a.abs().max().item() * a.shape[1] ** 0.5)
            b_max = max(b_max, module.lora_B["default"].weight.abs().max().item())
    for name, p in fresh.named_parameters():
        if "lora_magnitude_vector" in name:
            module = corenet_name(name).removesuffix(".lora_magnitude_vector")
            out["fresh_magnitude." + module] = p.detach().contiguous()
    out["fresh_b_max"] = torch.tensor([b_max])
    out["fresh_a_bound_ratio"] = torch.tensor([a_ratio])

    if args.merged:
        merged = load_base(args.merged)
        merged.eval()
        with torch.no_grad():
            out["merged_logits"] = merged(input_ids=ids).logits.contiguous()

    save_file(out, args.out)
    print(json.dumps({"peft": peft.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
