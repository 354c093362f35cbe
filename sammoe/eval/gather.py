"""Collect evaluation rows from every DDP rank, each (model, case, class, click count) once.

Lightning's DistributedSampler pads validation/test sets by repeating cases, so the same row can come from
two ranks; `merge_rows` keeps the first. Without an initialised process group this is just `merge_rows`.
"""

from __future__ import annotations

from collections.abc import Iterable

from sammoe.eval.results import EvalRow, merge_rows

__all__ = ["all_gather_rows"]


def all_gather_rows(rows: Iterable[EvalRow], group: object | None = None) -> list[EvalRow]:
    """Every rank's rows merged and de-duplicated, returned on every rank, in rank order.

    A collective: under DDP, call it on all ranks (e.g. in `on_validation_epoch_end`), then let rank 0
    write the report.
    """
    local = [row.to_dict() for row in rows]  # plain dicts: pickling needs no sammoe class on the wire
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return merge_rows(local)
    parts: list[list[dict] | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(parts, local, group=group)
    return merge_rows(*(p or [] for p in parts))
