"""The one training loop Tunery owns, on ``accelerate``.

Every stage trains through ``TrainLoop``; a stage only says how rows become a
batch and a batch becomes a summed loss (``train.stages``). The loop does the
rest: deterministic sharded batches (``train.batching``), gradient accumulation
normalised by the label tokens of the whole optimizer step across micro-batches
AND processes (so 1x8, 8x1 and 2 processes x 4 give the same gradients),
clipping, the LR schedule, evaluation, logging and resumable checkpoints.
"""

import hashlib
import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, InitProcessGroupKwargs
from torch.utils.data import DataLoader
from transformers import set_seed

from tunery.config.schema import RunConfig, TrainingArgs
from tunery.errors import ConfigError
from tunery.train import checkpoint as ckpt
from tunery.train.batching import BatchPlan, MicroBatch, eval_batches
from tunery.train.callbacks import Reporter, build_log_entry, plot_metric, save_results
from tunery.train.interrupt import StopRequest, stop_on_signal
from tunery.train.layerwise import LayerwiseOptimizer
from tunery.train.memory import (
    HeapReleaser,
    checkpoint_interval,
    cpu_autocast,
    enable_gradient_checkpointing,
    forward_token_cap,
    peft_autocast_inputs,
    recomputing_activations,
    supports_checkpointing,
)
from tunery.train.schedule import create_optimizer, create_scheduler
from tunery.train.stages import Stage

logger = logging.getLogger(__name__)


def create_accelerator(args: TrainingArgs) -> Accelerator:
    """Mixed precision on GPUs from bf16/fp16. On the CPU the loop autocasts itself (``cpu_autocast``):
    accelerate's precision is fixed once per process, and CPU runs of both kinds share processes
    (tests, notebooks)."""
    on_cpu = args.use_cpu or not torch.cuda.is_available()
    precision = "no" if on_cpu else "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))
    return Accelerator(cpu=on_cpu, mixed_precision=precision, kwargs_handlers=[timeout])


class StageModule(torch.nn.Module):
    """The stage's loss as the forward of one module.

    DDP (and FSDP/DeepSpeed) only synchronise gradients of computations that go
    through the wrapper's forward; losses that call parts of the model directly
    (e.g. the decoder, then the head on label positions only) need this shell.
    """

    def __init__(self, model: torch.nn.Module, stage: Stage):
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | int]:
        return self.stage.compute_loss(self.model, batch)


@dataclass
class TrainState:
    """Progress that a checkpoint must carry for an exact resume."""

    global_step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 1
    samples_seen: int = 0
    input_tokens_seen: int = 0
    train_loss_sum: float = 0.0  # over all logged steps, summed over label tokens
    train_loss_tokens: int = 0
    pending_loss: float = 0.0  # since the last log line, not yet in the totals
    pending_tokens: int = 0
    global_batch_size: int = 0
    gradient_accumulation_steps: int = 1
    num_rows: int = 0
    seed: int = 0
    data_fingerprint: str = ""  # changed data with the same row count must not resume silently

    @property
    def epoch(self) -> float:
        return self.global_step / self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        epoch, step_in_epoch = divmod(self.global_step, self.steps_per_epoch)
        position = {"epoch": epoch, "step_in_epoch": step_in_epoch, "samples_seen": self.samples_seen}
        return {**asdict(self), "epoch": self.epoch, "data_position": position}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**{key: data[key] for key in cls.__dataclass_fields__ if key in data})


# What decides which rows each step sees: a resumed run must agree on all of it.
RESUME_MUST_MATCH = (
    "global_batch_size", "gradient_accumulation_steps", "num_rows", "seed", "data_fingerprint",
)


def fingerprint_rows(rows: Any) -> str:
    """A cheap identity of the training rows: their count plus the first, middle and last rows."""
    if rows is None or len(rows) == 0:
        return ""
    picks = [rows[index] for index in sorted({0, len(rows) // 2, len(rows) - 1})]
    # RL prompt rows have no labels: their prompt ids identify them
    text = json.dumps([[list(row["input_ids"]), list(row.get("labels") or [])] for row in picks])
    return hashlib.sha1(f"{len(rows)}:{text}".encode()).hexdigest()


class TrainLoop:
    """Train ``model`` with ``stage`` on ``train_data`` (rows indexable by int), per ``config``."""

    def __init__(self, config: RunConfig, model: torch.nn.Module, tokenizer: Any, stage: Stage,
                 train_data: Any, eval_data: Any = None, accelerator: Accelerator | None = None):
        self.config, self.args = config, config.training
        self.accelerator = accelerator or create_accelerator(self.args)
        self.model, self.tokenizer, self.stage = model, tokenizer, stage
        self.train_data, self.eval_data = train_data, eval_data
        self.output_dir = Path(self.args.output_dir)
        set_seed(self.args.seed)
        if self.args.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        acc = self.accelerator
        self.plan = BatchPlan(
            num_rows=len(train_data) if train_data is not None else 0,
            batch_size=self.args.per_device_train_batch_size, num_processes=acc.num_processes,
            process_index=acc.process_index, grad_accum=stage.micro_batches_per_step(self.args),
            seed=self.args.seed,
        )
        self.state = TrainState(
            steps_per_epoch=max(self.plan.steps_per_epoch, 1), global_batch_size=self.plan.global_batch,
            gradient_accumulation_steps=self.plan.grad_accum, num_rows=self.plan.num_rows,
            seed=self.args.seed, data_fingerprint=fingerprint_rows(train_data),
        )
        self.state.total_steps = self.count_total_steps()
        optimizer = create_optimizer(model, config)
        self.layerwise = optimizer if isinstance(optimizer, LayerwiseOptimizer) else None
        if self.layerwise is not None and self.args.max_grad_norm > 0:
            logger.warning("galore_layerwise updates each layer during backward, before a global "
                           "gradient norm exists: max_grad_norm=%s is not applied.", self.args.max_grad_norm)
        self.scheduler = create_scheduler(optimizer, self.args, self.state.total_steps)
        self.module, self.optimizer = acc.prepare(StageModule(model, stage), optimizer)
        self.max_tokens_per_forward = forward_token_cap(self.args, acc.device, stage.paired_passes)
        self.heap = HeapReleaser(acc.device, self.args.heap_release, self.args.bf16 or self.args.fp16)
        self.pending_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        self.last_grad_norm: torch.Tensor | None = None

    def count_total_steps(self) -> int:
        if self.args.max_steps > 0:
            return self.args.max_steps
        return max(math.ceil(self.args.num_train_epochs * self.plan.steps_per_epoch), 1)

    # ----------------------------------------------------------------- running
    def run(self) -> dict[str, Any]:
        """Train and/or evaluate as the config says; return the metrics (also written to disk)."""
        metrics: dict[str, Any] = {}
        if self.args.do_train:
            metrics.update(self.train())
        if self.args.do_eval and self.eval_data is not None:
            eval_metrics = {**self.evaluate(), "epoch": round(self.state.epoch, 2)}
            if self.accelerator.is_main_process:
                save_results(self.output_dir, "eval", eval_metrics)
            metrics.update(eval_metrics)
        return metrics

    def train(self) -> dict[str, Any]:
        if not self.plan.num_rows:
            raise ConfigError("The training dataset is empty; check `dataset` and `max_samples`.")
        resume_dir = self.prepare_output_dir()
        if resume_dir is not None:
            self.restore(resume_dir)
        acc = self.accelerator
        reporter = Reporter(
            self.output_dir, self.state.total_steps, self.state.global_step, acc.is_main_process,
            resuming=resume_dir is not None, tensorboard_dir=self.tensorboard_dir(),
        )
        self.session = {"start": time.time(), "step": self.state.global_step, "samples": 0, "tokens": 0}
        self.stage.on_train_begin(self)
        self.module.train()
        with peft_autocast_inputs(self.model, acc.mixed_precision != "no" or self.args.bf16):
            return self.train_steps(reporter)

    def train_steps(self, reporter: Reporter) -> dict[str, Any]:
        try:
            with stop_on_signal() as stop:
                while self.state.global_step < self.state.total_steps:
                    epoch, step_in_epoch = divmod(self.state.global_step, self.state.steps_per_epoch)
                    for window in self.iterate_windows(epoch, step_in_epoch):
                        self.optimizer_step(window)
                        self.after_step(reporter)
                        if self.state.global_step >= self.state.total_steps:
                            break
                        if self.stop_requested(stop):
                            self.stop_with_checkpoint()
        finally:
            reporter.close()
        return self.finish_training(reporter)

    def stop_requested(self, stop: StopRequest) -> bool:
        """True once any process was asked to stop (all processes must stop at the same step)."""
        if self.accelerator.num_processes == 1:
            return stop.requested
        flag = torch.tensor([float(stop.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def stop_with_checkpoint(self) -> None:
        """Save where the run stands (unless this step just did) and end the run as interrupted."""
        step = self.state.global_step
        folder = self.output_dir / f"{ckpt.PREFIX}{step}"
        if step % self.args.save_steps != 0:
            folder = self.save_checkpoint()
        logger.warning("Stopped at step %d on request; checkpoint: %s (resume with "
                       "resume_from_checkpoint=true).", step, folder)
        raise KeyboardInterrupt

    def prepare_output_dir(self) -> Path | None:
        resume_dir = ckpt.resolve_resume(self.args)
        ckpt.check_output_dir(self.args, resuming=resume_dir is not None)
        if self.accelerator.is_main_process:
            if resume_dir is None and self.args.overwrite_output_dir:
                ckpt.clear_previous_run(self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        return resume_dir

    def tensorboard_dir(self) -> Path | None:
        if not {"tensorboard", "all"} & set(self.args.report_to):
            return None
        return Path(self.args.logging_dir) if self.args.logging_dir else self.output_dir / "runs"

    def loader(self, data: Any, batches: list[list[int]]) -> DataLoader:
        # A private generator: creating a DataLoader iterator draws a seed from the global RNG
        # otherwise, which would make a resumed run's dropout differ from an uninterrupted one.
        return DataLoader(
            data, batch_sampler=batches, collate_fn=self.stage.collate,
            num_workers=self.args.dataloader_num_workers,
            generator=torch.Generator().manual_seed(self.args.seed),
        )

    def iterate_windows(self, epoch: int, start_step: int):
        """Yield the (batch, weight) micro-batches of each optimizer step of ``epoch``."""
        windows = self.plan.windows(epoch, start_step)
        flat: list[MicroBatch] = [micro for window in windows for micro in window]
        batches = iter(self.loader(self.train_data, [micro.indices for micro in flat]))
        for window in windows:
            yield [(next(batches), micro) for micro in window]

    def cpu_autocast(self):
        return cpu_autocast(self.accelerator.device, self.args.bf16)

    def to_device(self, batch: dict) -> dict:
        device = self.accelerator.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    # ------------------------------------------------------------------- steps
    def optimizer_step(self, window: list[tuple[dict, MicroBatch]]) -> None:
        """One training step: accumulate the window's gradients, clip, step, count.

        RL stages turn the window of prompts into experience first (``Stage.make_updates``),
        possibly as several optimizer updates (PPO's epochs over a rollout buffer); the
        learning-rate schedule still advances once per step.
        """
        acc, state = self.accelerator, self.state
        samples = self.count_rows(window)
        state.samples_seen += samples
        self.session["samples"] += samples
        for update in self.stage.make_updates(self, window):
            loss_tokens, input_tokens, step_loss = self.accumulate(update)
            if self.args.max_grad_norm > 0 and self.layerwise is None:
                self.last_grad_norm = acc.clip_grad_norm_(self.module.parameters(), self.args.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.pending_loss += step_loss
            state.pending_tokens += loss_tokens
            state.input_tokens_seen += input_tokens
            self.session["tokens"] += input_tokens
        if not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        state.global_step += 1
        self.stage.on_step_end(self)

    def count_rows(self, window: list[tuple[dict, MicroBatch]]) -> int:
        """Training rows of the step, over all processes (each counted once, however many
        updates a stage makes of them: PPO's epochs pass over the same rollouts)."""
        rows = torch.tensor([float(sum(len(m.indices) for _, m in window if m.weight))],
                            dtype=torch.float64, device=self.accelerator.device)
        return int(self.accelerator.reduce(rows, "sum").item())

    def accumulate(self, window: list[tuple[dict, MicroBatch]]) -> tuple[int, int, torch.Tensor]:
        """Backward every micro-batch so the gradients are d(mean loss per label token of the step).

        Returns the step's global (label tokens, input tokens) and this process's loss sum.
        """
        acc = self.accelerator
        counts = torch.tensor(
            [[self.stage.count_loss_tokens(b), self.stage.count_input_tokens(b)]
             for b, m in window if m.weight], dtype=torch.float64,
        ).reshape(-1, 2).sum(0)
        totals = acc.reduce(counts.to(acc.device), "sum").tolist()
        loss_tokens, input_tokens = (int(x) for x in totals)
        # DDP averages gradients over processes; multiplying by their number turns that
        # average into the sum, so every label token of the step weighs 1 / loss_tokens.
        scale = acc.num_processes / max(loss_tokens, 1)
        step_loss = torch.zeros((), dtype=torch.float64, device=acc.device)
        passes = [(piece, micro.weight) for batch, micro in window
                  for piece in self.stage.split(batch, self.max_tokens_per_forward)]
        for index, (piece, weight) in enumerate(passes):
            sync = index == len(passes) - 1  # DDP reduces gradients once, after the last pass
            with nullcontext() if sync else acc.no_sync(self.module):
                with self.cpu_autocast(), self.recomputing_if_oversized(piece):
                    loss_sum, _ = self.module(self.to_device(piece))
                with self.updating_in_backward(last_pass=sync):
                    acc.backward(loss_sum * (scale * weight))
            step_loss += loss_sum.detach().double() * weight
            del loss_sum
            self.heap.after_pass()
        return loss_tokens, input_tokens, step_loss

    def recomputing_if_oversized(self, piece: dict):
        """A pass over the token cap (one example or pair longer than the cap: it cannot be split)
        recomputes part of its layers in backward, so it saves about what a capped pass saves."""
        cap = self.max_tokens_per_forward
        if cap <= 0 or self.args.gradient_checkpointing or not supports_checkpointing(self.model):
            return nullcontext()
        tokens = self.stage.count_input_tokens(piece)
        if tokens <= cap:
            return nullcontext()
        return recomputing_activations(self.model, checkpoint_interval(tokens, cap))

    def updating_in_backward(self, last_pass: bool):
        """Layer-wise optimizers update each parameter during the step's last backward."""
        if self.layerwise is None or not last_pass:
            return nullcontext()
        return self.layerwise.stepping_in_backward()

    def after_step(self, reporter: Reporter) -> None:
        """Log, evaluate and save at the configured steps (in that order, like transformers)."""
        args, state = self.args, self.state
        step, last = state.global_step, state.global_step >= state.total_steps
        loss = self.flush_loss() if step % args.logging_steps == 0 or last else None
        values = {"loss": loss, **self.step_extras()} if loss is not None else None
        reporter.advance(loss, values)
        if values is not None:
            reporter.write(self.log_entry(values))
        eval_every = args.eval_steps or args.logging_steps  # transformers' default
        epoch_end = step % state.steps_per_epoch == 0
        if self.eval_data is not None and (
            (args.eval_strategy == "steps" and step % eval_every == 0)
            or (args.eval_strategy == "epoch" and epoch_end)
        ):
            reporter.write(self.log_entry(self.evaluate()))
        if step % args.save_steps == 0 or last:
            self.save_checkpoint()

    def flush_loss(self) -> float:
        """Mean loss per label token since the last log (all processes); moves it into the totals."""
        state = self.state
        total = self.accelerator.reduce(self.pending_loss.clone(), "sum").item() + state.pending_loss
        loss = total / max(state.pending_tokens, 1)
        state.train_loss_sum += total
        state.train_loss_tokens += state.pending_tokens
        state.pending_loss, state.pending_tokens = 0.0, 0
        self.pending_loss.zero_()
        return loss

    def step_extras(self) -> dict[str, Any]:
        elapsed = max(time.time() - self.session["start"], 1e-9)
        extras: dict[str, Any] = {
            "lr": self.scheduler.get_last_lr()[0],
            "tokens_per_second": round(self.session["tokens"] / elapsed, 2),
            "total_tokens": self.state.input_tokens_seen,
        }
        if self.last_grad_norm is not None:
            extras["grad_norm"] = round(float(self.last_grad_norm), 6)
        return extras | self.stage.pop_metrics("train")

    def log_entry(self, values: dict[str, Any]) -> dict[str, Any]:
        state = self.state
        elapsed = time.time() - self.session["start"]
        done = state.global_step - self.session["step"]
        if "loss" in values:
            values["loss"] = round(values["loss"], 6)
        return build_log_entry(state.global_step, state.total_steps, state.epoch, elapsed, done, values)

    # -------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss per label token and perplexity over the whole eval set, gathered from all processes."""
        acc = self.accelerator
        self.stage.before_evaluate(self)
        batches = eval_batches(
            len(self.eval_data), self.args.per_device_eval_batch_size, acc.num_processes, acc.process_index
        )
        was_training = self.module.training
        self.module.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=acc.device)
        # The unwrapped model: no DDP collectives, so processes may hold different batch counts.
        with acc.autocast(), self.cpu_autocast():
            for batch in self.loader(self.eval_data, batches):
                loss_sum, n_tokens = self.stage.compute_loss(self.model, self.to_device(batch))
                totals[0] += loss_sum.double()
                totals[1] += float(n_tokens)
        loss_sum, n_tokens = acc.reduce(totals, "sum").tolist()
        self.module.train(was_training)
        eval_loss = loss_sum / max(n_tokens, 1.0)
        metrics = {"eval_loss": round(eval_loss, 6), "perplexity": round(safe_exp(eval_loss), 4)}
        return metrics | {f"eval_{key}": value for key, value in self.stage.pop_metrics("eval").items()}

    # ------------------------------------------------------------- checkpoints
    def checkpoint_parts(self) -> dict[str, Any]:
        scaler = getattr(self.accelerator, "scaler", None)
        return {"model": self.model, "tokenizer": self.tokenizer, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": scaler, "save_only_model": self.args.save_only_model}

    def save_checkpoint(self) -> Path:
        acc, state = self.accelerator, self.state
        # Fold every process's unlogged loss into one global number (the same on every process;
        # flush_loss adds it after its reduction) so the checkpoint holds it.
        state.pending_loss += acc.reduce(self.pending_loss.clone(), "sum").item()
        self.pending_loss.zero_()
        final = self.output_dir / f"{ckpt.PREFIX}{state.global_step}"
        parts = {**self.checkpoint_parts(), "state": state.to_dict()}
        ckpt.save_checkpoint(final, parts, acc.process_index, acc.is_main_process, acc.wait_for_everyone)
        if acc.is_main_process:
            self.stage.save_extras(acc.unwrap_model(self.model), final)
            ckpt.prune_checkpoints(self.output_dir, self.args.save_total_limit)
        acc.wait_for_everyone()
        return final

    def restore(self, folder: Path) -> None:
        acc = self.accelerator
        saved = ckpt.load_checkpoint(folder, self.checkpoint_parts(), acc.process_index)
        self.stage.load_extras(acc.unwrap_model(self.model), folder)
        restored = TrainState.from_dict(saved)
        for key in RESUME_MUST_MATCH:
            if key in saved and getattr(restored, key) != getattr(self.state, key):
                raise ConfigError(
                    f"Checkpoint '{folder}' was written with {key}={getattr(restored, key)} but this run "
                    f"has {getattr(self.state, key)}; resume with the same data, seed, batch size, number "
                    "of processes and gradient_accumulation_steps."
                )
        restored.total_steps, restored.steps_per_epoch = self.state.total_steps, self.state.steps_per_epoch
        self.state = restored

    # ------------------------------------------------------------------ ending
    def finish_training(self, reporter: Reporter) -> dict[str, Any]:
        state, acc = self.state, self.accelerator
        if state.pending_tokens:  # global, so every process agrees on joining the reduction
            self.flush_loss()
        runtime = max(time.time() - self.session["start"], 1e-9)
        steps = state.global_step - self.session["step"]
        metrics = {
            "epoch": round(state.epoch, 2),
            "train_loss": round(state.train_loss_sum / max(state.train_loss_tokens, 1), 6),
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(self.session["samples"] / runtime, 3),
            "train_steps_per_second": round(steps / runtime, 3),
            "train_tokens_per_second": round(self.session["tokens"] / runtime, 2),
        }
        if acc.is_main_process:
            save_results(self.output_dir, "train", metrics)
            if self.config.finetuning.plot_loss and reporter.log is not None:
                entries = reporter.log.entries()
                plot_metric(self.output_dir, entries, "loss")
                plot_metric(self.output_dir, entries, "eval_loss")
        acc.wait_for_everyone()
        return metrics


def safe_exp(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return float("inf")
