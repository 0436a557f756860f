"""Which rows each process sees at each step: deterministic, sharded and resumable.

The order of an epoch is a permutation seeded by ``seed + epoch``. It is cut
into *global* micro-batches of ``per_device_batch_size x num_processes`` rows,
and each global micro-batch is split evenly over the processes. So the rows
that make up optimizer step ``s`` depend only on the seed, ``s`` and the global
batch geometry, not on how many processes share it (2 x 2 sees exactly what
1 x 4 sees), and resuming needs nothing but the step number.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MicroBatch:
    """Row indices for this process; ``weight`` 0 marks a stand-in row for an empty share."""

    indices: list[int]
    weight: float = 1.0


@dataclass(frozen=True)
class BatchPlan:
    num_rows: int
    batch_size: int  # rows per micro-batch per process
    num_processes: int = 1
    process_index: int = 0
    grad_accum: int = 1
    seed: int = 42
    shuffle: bool = True

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.num_processes

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.num_rows / self.global_batch)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch; a short last window still makes a step."""
        return math.ceil(self.micro_batches_per_epoch / self.grad_accum)

    def epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_rows))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_rows, generator=generator).tolist()

    def micro_batches(self, epoch: int, start_step: int = 0) -> list[MicroBatch]:
        """This process's micro-batches of ``epoch``, from optimizer step ``start_step`` of it on."""
        order = self.epoch_order(epoch)
        batches = []
        first = start_step * self.grad_accum * self.global_batch
        for begin in range(first, self.num_rows, self.global_batch):
            chunk = order[begin : begin + self.global_batch]
            share = np.array_split(np.asarray(chunk), self.num_processes)[self.process_index].tolist()
            # Every process must run forward/backward at every micro-step (DDP syncs there);
            # a process left without rows in a short last chunk reruns one row at weight 0.
            batches.append(MicroBatch(share) if share else MicroBatch(chunk[:1], 0.0))
        return batches

    def windows(self, epoch: int, start_step: int = 0) -> list[list[MicroBatch]]:
        """Micro-batches grouped into optimizer steps (``grad_accum`` each, the last maybe fewer)."""
        batches = self.micro_batches(epoch, start_step)
        return [batches[i : i + self.grad_accum] for i in range(0, len(batches), self.grad_accum)]


def eval_batches(num_rows: int, batch_size: int, num_processes: int, process_index: int) -> list[list[int]]:
    """This process's share of evaluation rows, in order; every row is seen exactly once overall."""
    batches = []
    for begin in range(0, num_rows, batch_size * num_processes):
        chunk = list(range(begin, min(begin + batch_size * num_processes, num_rows)))
        share = np.array_split(np.asarray(chunk), num_processes)[process_index].tolist()
        if share:
            batches.append(share)
    return batches
