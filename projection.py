"""A fixed random projection with ReLU in front of the output layers: RanPAC's expansion of frozen features
(McDonnell et al., NeurIPS 2023, "RanPAC: Random Projections and Pre-trained Models for Continual Learning"),
h = ReLU(z P) with P a (d, M) matrix of independent standard normal entries drawn once from a seed.

It applies after the feature cache, which keeps the network's own features, so the same cache serves every M
and seed. SLDA then keeps an M x M covariance: ``check_memory`` says before any work whether it fits.
"""
import os

import torch
from torch import nn

from options import SettingError

# The M x M matrices SLDA holds at once while it rebuilds its classifier: Sigma in its own precision, then the
# shrunk covariance and its Cholesky factor in float64.
FLOAT64_MATRICES = 2


class RandomProjection(nn.Module):
    """h = ReLU(z P): z (n, d) -> h (n, M) float32, P (d, M) float32 with entries N(0, 1) drawn by
    ``torch.randn`` from a CPU generator seeded with ``seed`` (the same on every machine and device); P is a
    buffer, so the module moves with ``.to`` and is part of an exported model."""

    def __init__(self, in_dim, out_dim, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer('matrix', torch.randn(in_dim, out_dim, generator=generator))

    @property
    def out_dim(self):
        return self.matrix.shape[1]

    def forward(self, features):
        return torch.relu(features.float() @ self.matrix.to(features.device))


class ProjectedReader:
    """A features.FeatureReader whose features come out projected (``take``); the rest is the reader's."""

    def __init__(self, reader, projection):
        self.reader, self.projection = reader, projection

    def take(self, indices):
        features, labels = self.reader.take(indices)
        return self.projection(features), labels

    def __getattr__(self, name):
        return getattr(self.reader, name)


def available_bytes(device):
    """Memory free for new tensors on ``device``: CUDA's free memory, else the system's MemAvailable (Linux),
    else None where it cannot be told."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf('SC_AVPHYS_PAGES') if hasattr(os, 'sysconf') else -1
    return pages * os.sysconf('SC_PAGE_SIZE') if pages > 0 else None


def needed_bytes(out_dim, num_classes, dtype):
    """Bytes SLDA needs for M = ``out_dim`` features: its covariance in ``dtype`` and the float64 matrices of a
    classifier rebuild (each M x M), plus its means and classifier weights (M x C each, float64 at most)."""
    size = torch.finfo(dtype).bits // 8
    return out_dim * out_dim * (size + 8 * FLOAT64_MATRICES) + 2 * 8 * out_dim * num_classes


def check_memory(out_dim, num_classes, dtype, device, available=None):
    """Raise SettingError (setting ``random_projection``) when SLDA's matrices for ``out_dim`` features would not
    fit in the memory available on ``device`` (``available`` bytes, or measured)."""
    needed = needed_bytes(out_dim, num_classes, dtype)
    available = available_bytes(device) if available is None else available
    if available is not None and needed > available:
        raise SettingError('random_projection', f'--random_projection {out_dim} needs about {needed / 2**30:.1f} '
                                                f'GiB for SLDA\'s {out_dim} x {out_dim} covariance and classifier; '
                                                f'{available / 2**30:.1f} GiB is available on {device}. Choose a '
                                                f'smaller M')
