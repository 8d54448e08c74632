"""`motion_cnn.sync_bn`'s BatchNorm: two processes on a CPU (gloo) process group normalize, learn and keep running
statistics as one BatchNorm does on their two batches together."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from multistream.train.sync_bn import SyncBatchNorm2d, bn_spread, convert_sync_bn

BATCH = (8, 3, 5, 6)


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*BATCH, generator=generator) * 3 + 1
    weights = torch.randn(*BATCH, generator=generator)  # a loss that is not symmetric in the samples
    return x, weights


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = convert_sync_bn(nn.Sequential(nn.BatchNorm2d(BATCH[1])))[0]
    x, weights = _data()
    mine = slice(rank * BATCH[0] // world, (rank + 1) * BATCH[0] // world)
    x = x[mine].clone().requires_grad_(True)
    y = bn(x)
    (y * weights[mine]).sum().backward()
    grads = torch.stack([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # what DDP's gradient sum gives (before its division by the workers)
    torch.save({"y": y.detach(), "x_grad": x.grad, "grads": grads, "mean": bn.running_mean, "var": bn.running_var,
                "spread": bn_spread(bn, torch.device("cpu"))}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_two_processes_normalize_as_one_batchnorm_over_both_batches(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(BATCH[1])
    x, weights = _data()
    x.requires_grad_(True)
    y = reference(x)
    (y * weights).sum().backward()
    ranks = [torch.load(tmp_path / f"{rank}.pt") for rank in (0, 1)]
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), x.grad, rtol=1e-4, atol=1e-5)
    for r in ranks:
        torch.testing.assert_close(r["grads"], torch.stack([reference.weight.grad, reference.bias.grad]))
        torch.testing.assert_close(r["mean"], reference.running_mean)
        torch.testing.assert_close(r["var"], reference.running_var)
        assert r["spread"] == 0.0
    assert torch.equal(ranks[0]["mean"], ranks[1]["mean"]) and torch.equal(ranks[0]["var"], ranks[1]["var"])


def test_one_process_and_eval_are_batchnorm_and_the_state_is_batchnorm_s():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    sync = convert_sync_bn(nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3)))
    sync.load_state_dict(plain.state_dict())
    assert isinstance(sync[1], SyncBatchNorm2d) and sync.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.eval()(x), plain.eval()(x))
    assert bn_spread(sync, torch.device("cpu")) == 0.0
