"""Device names a user types: one line for a device this machine lacks, `gpu` meaning cuda."""

from __future__ import annotations

import torch

from sammoe.inference import devices


def test_gpu_is_an_alias_of_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.usable_device("gpu") == torch.device("cuda")
    assert devices.usable_device(" GPU:1 ") == torch.device("cuda", 1)
