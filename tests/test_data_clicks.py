"""Click simulation: uniform error-region sampling, empty cases, seeding, devices."""

import pytest
import torch

from sammoe.data.clicks import next_click_from_error


def ball(shape, centre, radius):
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij"), -1).float()
    return ((grid - torch.tensor(centre).float()) ** 2).sum(-1) <= radius**2


def test_uniform_over_error_region_and_labels():
    gt = torch.zeros(6, 6, 6, dtype=torch.bool)
    pred = torch.zeros(6, 6, 6, dtype=torch.bool)
    gt[1, 1, 1:5] = True  # 4 voxels, pred[1,1,1] correct -> FN at 2,3,4
    pred[1, 1, 1] = True
    pred[4, 4, 2:7] = True  # FP x4
    batch = 8000
    coords, labels = next_click_from_error(
        pred.expand(batch, -1, -1, -1), gt.expand(batch, -1, -1, -1), torch.Generator().manual_seed(0)
    )
    assert coords.shape == (batch, 1, 3) and coords.dtype == torch.float32
    assert labels.shape == (batch, 1) and labels.dtype == torch.long
    c = coords[:, 0].long()
    in_fn = gt[c[:, 0], c[:, 1], c[:, 2]] & ~pred[c[:, 0], c[:, 1], c[:, 2]]
    in_fp = pred[c[:, 0], c[:, 1], c[:, 2]] & ~gt[c[:, 0], c[:, 1], c[:, 2]]
    assert bool((in_fn | in_fp).all())
    assert torch.equal(labels[:, 0], in_fn.long())
    _, counts = torch.unique(c[:, 0] * 36 + c[:, 1] * 6 + c[:, 2], return_counts=True)
    assert len(counts) == 7  # 3 FN + 4 FP voxels, each hit
    freq = counts.float() / batch
    assert torch.allclose(freq, torch.full_like(freq, 1 / 7), atol=0.02)


def test_empty_cases():
    gt = torch.zeros(3, 1, 5, 5, 5, dtype=torch.bool)
    pred = torch.zeros(3, 1, 5, 5, 5, dtype=torch.bool)
    gt[0, 0, 2, 2, 2] = True
    pred[0, 0, 2, 2, 2] = True  # perfect prediction -> random foreground voxel, positive
    pred[1, 0, 0, 0, 4] = True  # empty GT, one FP -> negative click there
    # element 2: empty GT and empty prediction -> "no click" label -1
    coords, labels = next_click_from_error(pred, gt, torch.Generator().manual_seed(1))
    assert coords[0, 0].tolist() == [2, 2, 2] and labels[0, 0] == 1
    assert coords[1, 0].tolist() == [0, 0, 4] and labels[1, 0] == 0
    assert coords[2, 0].tolist() == [0, 0, 0] and labels[2, 0] == -1


def test_seeded_and_float_inputs():
    g = ball((16, 16, 16), (8, 8, 8), 5)[None].expand(2, -1, -1, -1)
    p = torch.rand(2, 16, 16, 16, generator=torch.Generator().manual_seed(3))  # probabilities, read as > 0.5
    a = next_click_from_error(p, g, torch.Generator().manual_seed(7))
    b = next_click_from_error(p, g, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = next_click_from_error(p, g, torch.Generator().manual_seed(8))
    assert not torch.equal(a[0], c[0])
    with pytest.raises(ValueError):
        next_click_from_error(p[:, :8], g)


@pytest.mark.gpu
def test_gpu_tensors():
    gt = ball((32, 32, 32), (16, 16, 16), 6)[None].cuda()
    pred = torch.zeros_like(gt)
    gen = torch.Generator(device="cuda").manual_seed(0)
    coords, labels = next_click_from_error(pred, gt, gen)
    assert coords.device.type == "cuda" and labels[0, 0] == 1
    coords, labels = next_click_from_error(
        pred, gt, torch.Generator().manual_seed(0)
    )  # CPU generator works too
    assert coords.is_cuda
