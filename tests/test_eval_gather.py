"""DDP: rows from every rank merged, a case repeated by the sampler's padding counted once."""

import json
import os

import pytest

from sammoe.eval import GENERAL, EvalRow, all_gather_rows

torch = pytest.importorskip("torch")


def _rows(cases):
    return [
        EvalRow("moe", c, "liver", GENERAL, 1, 0.5, routed_expert="E0", oracle_expert="E0") for c in cases
    ]


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # 3 cases over 2 ranks: the sampler pads rank 1 with a repeat of case c0
        mine = _rows(["c0", "c2"] if rank == 0 else ["c1", "c0"])
        merged = all_gather_rows(mine)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump([r.case_id for r in merged], fh)
    finally:
        dist.destroy_process_group()


def test_all_gather_rows_without_process_group_is_merge():
    assert [r.case_id for r in all_gather_rows(_rows(["a", "b", "a"]))] == ["a", "b"]


def test_all_gather_rows_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == ["c0", "c2", "c1"]
