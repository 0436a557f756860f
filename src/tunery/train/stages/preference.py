"""Stages ``dpo`` (DPO, hinge, IPO, ORPO, SimPO by ``pref_loss``) and ``kto``.

Each row holds two examples that belong together (see ``data.encode``): chosen
then rejected for DPO, the example then its mismatched KL example for KTO. A
batch is flattened with no padding and the prompt the two examples share is
encoded once (``data.shared_prefix``), so both answers of every pair go through
the policy in ONE forward pass that computes their prompt a single time.

Reference log-probabilities are computed once per example before the first step
(``on_train_begin``) and stored with the rows, never recomputed per epoch: with
LoRA the reference is the same weights with the adapter disabled (no second
copy); with full or freeze tuning, or when ``ref_model`` is set, a reference model
is loaded for that pass and freed. ORPO and SimPO need no reference.

The loss is a mean over pairs (the loop normalises by ``count_loss_tokens``,
which is the number of pairs here), and each step logs ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``,
``logps/chosen`` and ``logps/rejected`` (``eval_`` prefixed for evaluation).
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from tunery.data.collate import collate_padded
from tunery.data.shared_prefix import collate_shared_pairs, group_by_tokens
from tunery.losses.example_logps import example_logps
from tunery.losses.preference import dpo_loss, kto_loss, orpo_loss, simpo_loss
from tunery.train.stages import STAGES, Stage

REFERENCE_FREE = ("orpo", "simpo")
AVERAGED = ("ipo", "orpo", "simpo")  # LLaMA-Factory feeds these per-token average log-probs
PER_PAIR_KEYS = ("reference_logps", "kto_tag")


class MetricSums:
    """Running means of logged per-example values, kept apart for training and evaluation."""

    def __init__(self):
        self.sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))

    def add(self, values: dict[str, torch.Tensor]) -> None:
        mode = "train" if torch.is_grad_enabled() else "eval"
        for key, value in values.items():
            entry = self.sums[mode][key]
            entry[0] += float(value.detach().float().sum())
            entry[1] += value.numel()

    def pop(self, mode: str) -> dict[str, float]:
        sums = self.sums.pop(mode, {})
        return {key: round(total / count, 6) for key, (total, count) in sums.items() if count}


class PairedStage(Stage):
    """Rows of two examples; the loss is a mean over rows (pairs)."""

    flat_batches = True
    paired_passes = True

    def __init__(self, config, tokenizer=None):
        super().__init__(config, tokenizer)
        self.metrics = MetricSums()

    def collate(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        rows = list(rows)
        if self.flat_batches:
            batch = collate_shared_pairs(rows)
            batch["pair_rows"] = rows  # kept to cut the batch into smaller forward passes
        else:
            pad_id = getattr(self.tokenizer, "pad_token_id", None)
            batch = collate_padded(rows, pad_id if pad_id is not None else 0)
        batch["pair_count"] = len(rows)
        batch["example_tokens"] = sum(len(row["input_ids"]) for row in rows)
        if "reference_logps" in rows[0]:
            batch["reference_logps"] = torch.tensor([r["reference_logps"] for r in rows], dtype=torch.float32)
        return batch

    def count_loss_tokens(self, batch: dict) -> int:
        return int(batch["pair_count"])

    def count_input_tokens(self, batch: dict) -> int:
        """Tokens of both examples, as if each were run alone (the shared prompt counts twice),
        so throughput compares with tools that do not share it."""
        return int(batch["example_tokens"])

    def split(self, batch: dict, max_tokens: int) -> list[dict]:
        """Whole pairs per forward pass: a pair's loss needs both of its examples, nothing else."""
        if "pair_rows" not in batch:
            return [batch]
        ranges = group_by_tokens(batch["pair_rows"], max_tokens)
        if len(ranges) == 1:
            return [batch]
        return [self.slice_pairs(batch, lo, hi) for lo, hi in ranges]

    def slice_pairs(self, batch: dict, lo: int, hi: int) -> dict:
        piece = self.collate(batch["pair_rows"][lo:hi])
        for key in PER_PAIR_KEYS:
            if key in batch:
                piece[key] = batch[key][lo:hi]
        return piece

    def pop_metrics(self, mode: str) -> dict[str, float]:
        return self.metrics.pop(mode)

    # ----- reference log-probabilities, once, before training -----

    @property
    def needs_reference(self) -> bool:
        return True

    @property
    def averaged_logps(self) -> bool:
        """Whether the loss takes per-token average log-probs (else summed ones)."""
        return False

    def on_train_begin(self, loop: Any) -> None:
        if self.needs_reference:
            loop.train_data = self.with_reference(loop, loop.train_data)

    def before_evaluate(self, loop: Any) -> None:
        # The reference never changes (adapter switched off, or a separately loaded model),
        # so the held-out rows get theirs at the first evaluation, whenever that is.
        if self.needs_reference and loop.eval_data is not None:
            loop.eval_data = self.with_reference(loop, loop.eval_data)

    def with_reference(self, loop: Any, rows: Any) -> Any:
        """``rows`` with a ``reference_logps`` column: the reference's log-probs of both examples."""
        if "reference_logps" in rows.column_names:
            return rows
        from tunery.train.reference import reference_logps

        return rows.add_column("reference_logps", reference_logps(self, loop, rows))

    def pair_logps(self, model: torch.nn.Module, batch: dict, average: bool) -> tuple[torch.Tensor, ...]:
        """(first, second) log-probs of every pair's two examples, summed or averaged per token."""
        sums, tokens = example_logps(model, batch)
        logps = sums / tokens.clamp(min=1) if average else sums
        return logps[0::2], logps[1::2], sums[0::2] / tokens[0::2].clamp(min=1)


@STAGES.register("dpo")
class DPOStage(PairedStage):
    name = "dpo"

    @property
    def needs_reference(self) -> bool:
        return self.config.finetuning.pref_loss not in REFERENCE_FREE

    @property
    def averaged_logps(self) -> bool:
        return self.config.finetuning.pref_loss in AVERAGED

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        args = self.config.finetuning
        chosen, rejected, chosen_avg = self.pair_logps(model, batch, self.averaged_logps)
        if args.pref_loss == "orpo":
            result = orpo_loss(chosen, rejected, args.pref_beta)
            losses = -chosen_avg + args.pref_beta * result.losses  # ORPO = SFT + beta * odds-ratio term
        elif args.pref_loss == "simpo":
            result = simpo_loss(chosen, rejected, args.pref_beta, args.simpo_gamma)
            losses = result.losses
        else:
            reference = batch["reference_logps"].to(chosen.device)
            result = dpo_loss(chosen, rejected, reference[:, 0], reference[:, 1], args.pref_beta,
                              args.pref_loss, args.dpo_label_smoothing)
            losses = result.losses
        if args.pref_ftx and args.pref_loss != "orpo":
            losses = losses - args.pref_ftx * chosen_avg  # LLaMA-Factory's pref_ftx: SFT on the chosen
        self.record(result.chosen_rewards, result.rejected_rewards, chosen, rejected)
        return losses.sum(), batch["pair_count"]

    def record(self, chosen_rewards, rejected_rewards, chosen_logps, rejected_logps) -> None:
        self.metrics.add({
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen_logps,
            "logps/rejected": rejected_logps,
        })


@STAGES.register("kto")
class KTOStage(PairedStage):
    """Each row: an example (desirable or not, ``kto_tag``) and its KL example (another row's answer)."""

    name = "kto"

    def collate(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        batch = super().collate(rows)
        batch["kto_tag"] = torch.tensor([bool(r["kto_tag"]) for r in rows])
        return batch

    def compute_loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        args = self.config.finetuning
        target, kl, _ = self.pair_logps(model, batch, average=False)
        reference = batch["reference_logps"].to(target.device)
        good = batch["kto_tag"].to(target.device)
        result = kto_loss(
            target[good], target[~good], kl.detach(), reference[good, 0], reference[~good, 0],
            reference[:, 1], args.pref_beta, args.kto_chosen_weight, args.kto_rejected_weight,
        )
        self.metrics.add({"kl": result.kl.reshape(1), "rewards/chosen": result.chosen_rewards,
                          "rewards/rejected": result.rejected_rewards})
        return result.losses.sum(), batch["pair_count"]
