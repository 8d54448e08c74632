"""Batch normalization over the whole batch of the data-parallel workers (`motion_cnn.sync_bn`), on CPU and GPU.

With W workers each one normalizes its own batch_size / W samples unless the statistics are shared: the paper's
batch of 32 on 4 workers would be 8 samples a BatchNorm. `SyncBatchNorm2d` takes the mean and variance of the
workers' batches together (two all-reduces of C values per layer and step: the mean, then the squared deviations
from it, exact rather than E[x²] - E[x]²), back-propagates through them (`torch.distributed.nn`'s all-reduce sums
the gradients), and moves its running statistics identically on every worker. torch's own `SyncBatchNorm` runs on
accelerators only, not on a CPU process group (gloo). Outside training, or in one process, it is `BatchNorm2d`:
its parameters and buffers have the same names, so a model saved with it loads into the plain network.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """`BatchNorm2d` whose training statistics are those of every worker's batch (see the module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world() == 1:
            return super().forward(x)
        dims, x32 = (0, 2, 3), x.float()
        local = torch.cat([x32.sum(dims), x32.new_tensor([x32.numel() / x32.shape[1]])])
        total = all_reduce(local)
        count = total[-1]
        mean = total[:-1] / count
        centred = x32 - mean[None, :, None, None]
        var = all_reduce(centred.pow(2).sum(dims)) / count  # biased: what normalizes the batch
        with torch.no_grad():
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
            self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            self.running_var.mul_(1 - momentum).add_(var.detach() * count / (count - 1).clamp(min=1), alpha=momentum)
            self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """`model` with every `BatchNorm2d` replaced in place by a `SyncBatchNorm2d` holding its parameters and
    statistics; returns the model."""
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SyncBatchNorm2d):
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync.to(next(child.buffers()).device))
        else:
            convert_sync_bn(child)
    return model


def bn_statistics(model: nn.Module) -> torch.Tensor:
    """Every BatchNorm's running mean and variance, concatenated (float64, CPU); empty without BatchNorm."""
    stats = [t.detach().double().cpu().reshape(-1) for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             for t in (m.running_mean, m.running_var) if t is not None]
    return torch.cat(stats) if stats else torch.zeros(0, dtype=torch.float64)


def bn_spread(model: nn.Module, device: torch.device) -> float:
    """The largest difference of a BatchNorm running statistic between the workers (0.0 in one process, and
    with `SyncBatchNorm2d` everywhere). A collective: every worker calls it."""
    stats = bn_statistics(model)
    if _world() == 1 or not len(stats):
        return 0.0
    both = torch.cat([stats, -stats]).to(device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    high, low = both[:len(stats)], -both[len(stats):]
    return float((high - low).max())
