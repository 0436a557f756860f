"""Sharded, seeded batch order: independent of the process count, resumable by step."""

from tunery.train.batching import BatchPlan, eval_batches


def global_steps(plan_args: dict, processes: int, epoch: int = 0) -> list[list[int]]:
    """Rows of each optimizer step, gathered over all processes."""
    per_process = [
        BatchPlan(**plan_args, num_processes=processes, process_index=rank).windows(epoch)
        for rank in range(processes)
    ]
    steps = []
    for windows in zip(*per_process, strict=True):
        steps.append(sorted(i for window in windows for micro in window for i in micro.indices))
    return steps


def test_two_processes_see_the_same_global_batches_as_one():
    one = global_steps({"num_rows": 22, "batch_size": 4, "grad_accum": 2, "seed": 3}, 1)
    two = global_steps({"num_rows": 22, "batch_size": 2, "grad_accum": 2, "seed": 3}, 2)
    assert one == two
    assert sorted(i for step in one for i in step) == list(range(22))


def test_processes_get_disjoint_shares():
    plans = [BatchPlan(num_rows=20, batch_size=2, num_processes=2, process_index=r) for r in range(2)]
    shares = [{i for micro in plan.micro_batches(0) for i in micro.indices} for plan in plans]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == set(range(20))


def test_order_is_seeded_by_epoch():
    plan = BatchPlan(num_rows=30, batch_size=3, seed=7)
    assert plan.epoch_order(0) == BatchPlan(num_rows=30, batch_size=3, seed=7).epoch_order(0)
    assert plan.epoch_order(0) != plan.epoch_order(1)
    assert sorted(plan.epoch_order(1)) == list(range(30))


def test_resuming_mid_epoch_continues_with_the_same_rows():
    plan = BatchPlan(num_rows=40, batch_size=2, grad_accum=3, seed=1)
    assert plan.windows(0, start_step=2) == plan.windows(0)[2:]


def test_step_counts_include_a_short_last_window():
    plan = BatchPlan(num_rows=10, batch_size=2, grad_accum=2)
    assert plan.micro_batches_per_epoch == 5
    assert plan.steps_per_epoch == 3
    assert [len(w) for w in plan.windows(0)] == [2, 2, 1]


def test_a_process_without_rows_gets_a_zero_weight_stand_in():
    # 5 rows, global micro-batch 4: the last chunk has 1 row for 2 processes
    last = [BatchPlan(num_rows=5, batch_size=2, num_processes=2, process_index=r).micro_batches(0)[-1]
            for r in range(2)]
    assert last[0].weight == 1.0 and len(last[0].indices) == 1
    assert last[1].weight == 0.0 and len(last[1].indices) == 1


def test_eval_batches_cover_every_row_once():
    shares = [eval_batches(11, 2, 3, rank) for rank in range(3)]
    seen = sorted(i for share in shares for batch in share for i in batch)
    assert seen == list(range(11))
