"""The trl library's DPO loss on given per-token log-probabilities: the oracle of
crates/train/tests/dpo_trl.rs.

Reads IN (safetensors): `token` (2P, T) policy log-probability of each target, `mask` (2P, T)
1 on answer tokens, `reference` (2P,) the reference's summed log-probabilities; rows are pairs
side by side (2i chosen, 2i+1 rejected), as corenet's
pairs mode lays them out. For each loss type, runs trl's own `DPOTrainer._compute_loss` (on a
trainer shell whose model returns those numbers, and with precomputed reference
log-probabilities) and writes to OUT the loss, the gradient with respect to `token` (rows in
corenet's order again) and the rewards trl logs.

usage: dpo_reference.py IN OUT BETA
"""

import sys
import types
from collections import defaultdict

import torch
from safetensors.torch import load_file, save_file
from trl.trainer.dpo_trainer import DPOTrainer

LOSSES = ["sigmoid", "hinge", "ipo"]


class Accelerator:
    """What `_compute_loss` asks of accelerate in one process."""

    device = torch.device("cpu")

    def gather(self, t):
        return t

    gather_for_metrics = gather


class ShellModel:
    """Returns, as trl's fused LM head would, the given per-token numbers of the batch."""

    training = True

    def __init__(self, token, mask):
        self.token, self.mask = token, mask

    def __call__(self, **kwargs):
        zeros = torch.zeros_like(self.mask)
        return types.SimpleNamespace(
            log_probs=self.token * self.mask,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
        )


def trainer(loss_type, beta, model):
    t = DPOTrainer.__new__(DPOTrainer)
    t.model = model
    t.accelerator = Accelerator()
    t.aux_loss_enabled = False
    t.ld_alpha = None
    t.precompute_ref_logps = True
    t.f_divergence_type = "reverse_kl"
    t.loss_types = [loss_type]
    t.loss_weights = [1.0]
    t.beta = beta
    t.label_smoothing = 0.0
    t.use_weighting = False
    t._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    t._total_train_tokens = 0
    t._tp_size = 1
    return t


def main():
    src, dst, beta = sys.argv[1], sys.argv[2], float(sys.argv[3])
    t = load_file(src)
    rows = t["token"].shape[0]
    # trl's batch is every chosen row, then every rejected row.
    order = torch.cat([torch.arange(0, rows, 2), torch.arange(1, rows, 2)])
    back = torch.argsort(order)
    out = {}
    for loss_type in LOSSES:
        token = t["token"][order].double().clone().requires_grad_(True)
        mask = t["mask"][order].double()
        reference = t["reference"][order].double()
        half = rows // 2
        # trl's completion mask runs over the input ids, one position ahead of the targets;
        # the first id is prompt (BOS) in every row.
        lead = torch.zeros(rows, 1, dtype=torch.long)
        inputs = {
            "input_ids": torch.zeros(rows, mask.shape[1] + 1, dtype=torch.long),
            "attention_mask": torch.ones(rows, mask.shape[1] + 1, dtype=torch.long),
            "completion_mask": torch.cat([lead, mask.long()], dim=1),
            "ref_chosen_logps": reference[:half],
            "ref_rejected_logps": reference[half:],
        }
        shell = trainer(loss_type, beta, ShellModel(token, mask))
        loss = shell._compute_loss(shell.model, inputs, return_outputs=False)
        loss.backward()
        metrics = shell._metrics["train"]
        out[f"{loss_type}.loss"] = loss.detach().reshape(1)
        out[f"{loss_type}.grad"] = token.grad[back].contiguous()
        out[f"{loss_type}.rewards"] = torch.tensor(
            [
                metrics["rewards/chosen"][-1],
                metrics["rewards/rejected"][-1],
                metrics["rewards/accuracies"][-1],
                metrics["rewards/margins"][-1],
                metrics["logps/chosen"][-1],
                metrics["logps/rejected"][-1],
            ],
            dtype=torch.float64,
        )
    save_file(out, dst)


if __name__ == "__main__":
    main()
