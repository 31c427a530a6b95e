"""Streaming Linear Discriminant Analysis (Hayes & Kanan, CVPR-W 2020).

One mean and one count per class and a single covariance matrix shared by all classes, updated one example
at a time in a single pass. ``fit`` applies the paper's per-sample rule to a whole batch at once, exactly:
the model after ``fit(X, y)`` equals the model after calling the per-sample rule on the rows of X in order.
"""
import math
import os
import warnings

import numpy as np
import torch
from torch import nn

from utils import safe_torch_load, save_tensor

# Rows per vectorised pass inside ``fit``. On the CPU, 2048 rows keep the float64 prefix sums (8 MB at
# d = 512) in cache (bench/README.md); a GPU wants large passes to amortise kernel launches.
FIT_CHUNK_ROWS = {'cpu': 2048, 'cuda': 65536}
# Batches of at most this many rows are fitted one row at a time with in-place rank-1 updates: for a true
# stream, one sample per call, sorting and prefix sums cost more than they save.
FIT_PER_SAMPLE_ROWS = 4


def oas_covariance(Z):
    """Oracle Approximating Shrinkage estimate of the covariance of centred rows (Chen et al. 2010).

    Follows scikit-learn's ``OAS(assume_centered=True)`` (>= 1.0). Z: (n, d) with n >= 1. Returns (d, d),
    computed in float64.
    """
    Z = Z.to(torch.float64)
    n, d = Z.shape
    S = Z.T @ Z / n
    mu = torch.trace(S) / d
    alpha = (S ** 2).mean()
    numerator = alpha + mu ** 2
    denominator = (n + 1) * (alpha - mu ** 2 / d)
    shrinkage = 1.0 if denominator == 0 else min((numerator / denominator).item(), 1.0)
    eye = torch.eye(d, dtype=S.dtype, device=S.device)
    return (1.0 - shrinkage) * S + shrinkage * mu * eye


def class_runs(y):
    """Group labels into runs of one class by a stable sort.

    y: (B,) int64. Returns ``order`` (B,), the permutation that sorts y keeping stream order within a class,
    and for each run: ``starts`` (R,) its first row in sorted order, ``lengths`` (R,) and ``labels`` (R,).
    """
    order = torch.argsort(y, stable=True)
    y_sorted = y[order]
    is_start = torch.ones_like(y_sorted, dtype=torch.bool)
    is_start[1:] = y_sorted[1:] != y_sorted[:-1]
    starts = torch.nonzero(is_start).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([len(y)], device=y.device)])
    return order, starts, ends - starts, y_sorted[starts]


def prefix_sums(rows, block=32):
    """(B + 1, d) float64 sums of the first i rows, i = 0..B. Differences of it give sums over runs of rows
    without atomic additions, so results are the same from run to run on any device.

    Summed within blocks of ``block`` rows, then the blocks' totals carried over: the same sums as one
    cumsum down the rows, faster on the CPU because the blocks are independent.
    """
    n, d = rows.shape
    prefix = torch.empty(n + 1, d, dtype=torch.float64, device=rows.device)
    prefix[0] = 0
    sums = prefix[1:]
    whole = n - n % block
    if whole:
        within = sums[:whole].view(-1, block, d)
        torch.cumsum(rows[:whole].reshape(-1, block, d), dim=1, dtype=torch.float64, out=within)
        within[1:] += within[:-1, -1].cumsum(dim=0)[:, None]
    if whole < n:
        torch.cumsum(rows[whole:], dim=0, dtype=torch.float64, out=sums[whole:])
        if whole:
            sums[whole:] += sums[whole - 1]
    return prefix


class StreamingLDA(nn.Module):
    """Deep SLDA output layer.

    Args:
        input_shape: feature dimension d.
        num_classes: number of classes C; labels are integers in [0, C).
        test_batch_size: rows scored per step in ``predict``.
        shrinkage_param: eps in Lambda = ((1 - eps) Sigma + eps I)^-1.
        streaming_update_sigma: True for a plastic covariance updated by every sample; False keeps the
            covariance that ``fit_base`` estimated (or the identity without base initialisation).
        device: where the state lives and the math runs; CUDA when available, else the CPU.
        dtype: float32 (default) or float64 for the means and covariance.
        mask_unseen_classes: score classes that have no sample yet as -inf. Off by default, as in the
            paper, where an unseen class has mu = 0 and scores exactly 0.

    State (registered buffers, so ``state_dict``, ``.to`` and ``torch.save`` work):
        muK (C, d) class means, cK (C,) int64 counts, Sigma (d, d) shared covariance, num_updates ()
        int64 number of samples seen.

    Sigma starts as the identity. The original started it as a matrix of ones: with a plastic covariance
    the first update multiplies it by t = 0 so the start does not matter, but with a fixed covariance and
    no base initialisation (or a predict before any fit) the all-ones matrix gives a precision of about
    (I - 11^T / d) / shrinkage, a nearest-class-mean rule on features with their mean over dimensions
    removed, while the identity gives plain nearest class mean.
    """

    def __init__(self, input_shape, num_classes, test_batch_size=1024, shrinkage_param=1e-4,
                 streaming_update_sigma=True, device=None, dtype=torch.float32, mask_unseen_classes=False):
        super().__init__()
        if int(input_shape) < 1:
            raise ValueError(f'input_shape must be a positive feature dimension, got {input_shape}')
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if int(test_batch_size) < 1:
            raise ValueError(f'test_batch_size must be positive, got {test_batch_size}')
        if not 0.0 <= float(shrinkage_param) <= 1.0:
            raise ValueError(f'shrinkage_param must be in [0, 1], got {shrinkage_param}')
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.input_shape = int(input_shape)
        self.num_classes = int(num_classes)
        self.test_batch_size = int(test_batch_size)
        self.shrinkage_param = float(shrinkage_param)
        self.streaming_update_sigma = bool(streaming_update_sigma)
        self.mask_unseen_classes = bool(mask_unseen_classes)
        d, C = self.input_shape, self.num_classes
        self.register_buffer('muK', torch.zeros(C, d, dtype=dtype, device=device))
        self.register_buffer('cK', torch.zeros(C, dtype=torch.int64, device=device))
        self.register_buffer('Sigma', torch.eye(d, dtype=dtype, device=device))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.int64, device=device))
        # {'head': (W, b)} of the linear classifier, derived from the state and emptied by every change. A dict
        # so that emptying it is not an nn.Module attribute assignment, which costs a stream of single samples.
        self._derived = {}
        self._warned_not_pd = False

    @property
    def device(self):
        return self.muK.device

    @property
    def dtype(self):
        return self.muK.dtype

    def extra_repr(self):
        return (f'input_shape={self.input_shape}, num_classes={self.num_classes}, '
                f'shrinkage_param={self.shrinkage_param}, streaming_update_sigma={self.streaming_update_sigma}')

    # ------------------------------------------------------------------ input validation
    def _check_features(self, X, name='X', convert=True):
        """X (n, d) or (d,), kept in its shape, converted to the model's device and dtype unless ``convert`` is
        False."""
        X = torch.as_tensor(X)
        if X.dim() not in (1, 2) or X.shape[-1] != self.input_shape:
            raise ValueError(f'{name} must have shape (n, {self.input_shape}) or ({self.input_shape},), '
                             f'got {tuple(X.shape)}')
        if not (X.is_floating_point() or X.dtype in (torch.int32, torch.int64, torch.uint8)):
            raise TypeError(f'{name} must hold real numbers, got dtype {X.dtype}')
        if convert:
            muK = self.muK
            X = X.to(device=muK.device, dtype=muK.dtype)
        # A sum is far cheaper than an elementwise test and is non-finite whenever an entry is; only then
        # (or when the sum overflowed) look for the offending row. math.isfinite on the Python float avoids a
        # tensor operation, which counts when a stream fits one sample per call.
        if not math.isfinite(X.sum(dtype=torch.float32).item()):
            bad_rows = torch.nonzero(~torch.isfinite(X.reshape(-1, self.input_shape)).all(dim=1))
            if bad_rows.numel():
                raise ValueError(f'{name} contains NaN or infinite values (first in row {bad_rows[0].item()})')
        return X

    def _check_labels(self, y, rows):
        """y as a 1-D integer tensor of ``rows`` labels, where it is; the range is checked by the caller."""
        y = torch.as_tensor(y)
        if y.dim() == 0:
            y = y.unsqueeze(0)
        if y.dim() != 1:
            raise ValueError(f'y must be a scalar or a 1-D vector of labels, got shape {tuple(y.shape)}')
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f'y must hold integer class labels, got dtype {y.dtype}')
        if y.shape[0] != rows:
            raise ValueError(f'X has {rows} rows but y has {y.shape[0]} labels')
        return y

    def _label_outside(self, label):
        return ValueError(f'label {label} is outside [0, num_classes={self.num_classes})')

    def _check_batch(self, X, y, convert=True):
        X = self._check_features(X, convert=convert).reshape(-1, self.input_shape)
        y = self._check_labels(y, X.shape[0]).to(device=self.device, dtype=torch.int64)
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise self._label_outside(y[(y < 0) | (y >= self.num_classes)][0].item())
        return X, y

    def _check_few(self, X, y):
        """Validation for the per-sample path: the rows of X as (d,) tensors on the model's device and dtype,
        the labels as Python ints."""
        X = self._check_features(X)
        rows = (X,) if X.dim() == 1 else X.unbind(0)
        labels = self._check_labels(y, len(rows)).tolist()
        for label in labels:
            if not 0 <= label < self.num_classes:
                raise self._label_outside(label)
        return rows, labels

    # ------------------------------------------------------------------ training
    def fit(self, x, y):
        """Stream samples into the model: one sample (x: (d,), y: scalar) or a batch (x: (B, d), y: (B,)).
        Returns the model.

        The result equals applying the paper's per-sample rule to the rows in order: with S = t Sigma, each
        sample adds (t / (t + 1)) r r^T to S, where t is the global update count before the sample and
        r = z - (its class mean before the sample). A few rows (a true stream's one sample per call) are
        updated in place one at a time; a larger batch in one vectorised pass, which gives the same model to
        rounding error. An empty batch is a no-op; an invalid batch raises before anything changes. X may be
        float16 or on another device: each pass converts only its rows.
        """
        X = torch.as_tensor(x).detach()     # the buffers need no grad: with X detached, nothing is recorded
        if 0 < (1 if X.dim() == 1 else len(X)) <= FIT_PER_SAMPLE_ROWS:
            rows, labels = self._check_few(X, y)
            self._derived.clear()
            self._fit_samples(rows, labels)
            return self
        X, y = self._check_batch(X, y, convert=False)
        if X.shape[0] == 0:
            return self
        self._derived.clear()
        t = int(self.num_updates)
        chunk = FIT_CHUNK_ROWS.get(self.device.type, FIT_CHUNK_ROWS['cuda'])
        for start in range(0, X.shape[0], chunk):
            rows = X[start:start + chunk].to(device=self.device, dtype=self.dtype)
            self._fit_chunk(rows, y[start:start + chunk], t + start)
        return self

    def _fit_samples(self, rows, labels):
        """The per-sample rule row by row, in place: Sigma <- (t / (t + 1)) Sigma + (t / (t + 1)^2) r r^T with
        r = z - mu_k, then mu_k <- mu_k + (z - mu_k) / (c_k + 1)."""
        t = int(self.num_updates) if self.streaming_update_sigma else 0
        for z, label in zip(rows, labels):
            mean, count = self.muK[label], self.cK[label]
            if self.streaming_update_sigma:
                residual = z - mean
                self.Sigma.addr_(residual, residual, beta=t / (t + 1), alpha=t / (t + 1) ** 2)
                t += 1
            mean.lerp_(z, 1 / (int(count) + 1))
            count.add_(1)
        self.num_updates.add_(len(labels))

    def _fit_chunk(self, X, y, t0):
        """One vectorised pass; t0 is the number of updates before the chunk."""
        B = X.shape[0]
        # Work in class-sorted order (stable, so each class keeps its stream order) on rows centred on the
        # class mean before the batch, u = z - mu_k. A row's pre-update class mean is then mu_k + Q / (c_k + n),
        # with Q the sum of the u of the n earlier same-class rows of the batch (prefix sums in float64).
        order, starts, lengths, labels = class_runs(y)
        y_sorted = y[order]
        u = X[order] - self.muK[y_sorted]
        prefix = prefix_sums(u)
        if self.streaming_update_sigma:
            first_row = starts.repeat_interleave(lengths)
            rows = torch.arange(B, device=X.device)
            seen_before = self.cK[y_sorted] + (rows - first_row)
            mean_shift = (prefix[:-1] - prefix[first_row]) / seen_before.clamp(min=1)[:, None]
            residual = u - mean_shift.to(self.dtype)
            steps = (t0 + order).to(torch.float64)       # global step of each row in stream order
            weights = (steps / (steps + 1)).to(self.dtype)
            scatter = (residual * weights[:, None]).T @ residual
            self.Sigma.copy_((t0 * self.Sigma + scatter) / (t0 + B))
        new_counts = self.cK[labels] + lengths
        run_sums = prefix[starts + lengths] - prefix[starts]
        self.muK[labels] = (self.muK[labels].to(torch.float64) + run_sums / new_counts[:, None]).to(self.dtype)
        self.cK[labels] = new_counts
        self.num_updates += B

    @torch.no_grad()
    def fit_base(self, X, y):
        """Base initialisation on all base data at once; replaces the whole state.

        X: (n, d) features, y: (n,) labels. Class means and counts come from the data, num_updates = n, and
        Sigma is the OAS estimate (assume_centered) of the class-centred features z - mu_y(z). Returns the
        model.
        """
        X, y = self._check_batch(X, y)
        if X.shape[0] == 0:
            raise ValueError('fit_base needs at least one sample, got an empty batch')
        order, starts, lengths, labels = class_runs(y)
        prefix = prefix_sums(X[order])
        means = torch.zeros(self.num_classes, self.input_shape, dtype=torch.float64, device=X.device)
        means[labels] = (prefix[starts + lengths] - prefix[starts]) / lengths[:, None]
        sigma = oas_covariance(X.to(torch.float64) - means[y])
        self._derived.clear()
        self.muK.copy_(means.to(self.dtype))
        self.cK.zero_()
        self.cK[labels] = lengths
        self.Sigma.copy_(sigma.to(self.dtype))
        self.num_updates.fill_(X.shape[0])
        return self

    # ------------------------------------------------------------------ prediction
    def _classifier(self):
        """(W (d, C), b (C,)) of the linear classifier, computed once per change of the model."""
        if 'head' in self._derived:
            return self._derived['head']
        d = self.input_shape
        eye = torch.eye(d, dtype=torch.float64, device=self.device)
        shrunk = (1 - self.shrinkage_param) * self.Sigma.to(torch.float64) + self.shrinkage_param * eye
        M = self.muK.to(torch.float64).T
        L, info = torch.linalg.cholesky_ex(shrunk)
        if int(info) == 0:
            W = torch.cholesky_solve(M, L)
        else:
            if not self._warned_not_pd:
                warnings.warn('the shrunk covariance is not positive definite (Cholesky failed at column '
                              f'{int(info)}); using a pseudo-inverse instead. A larger shrinkage_param avoids '
                              'this.',
                              RuntimeWarning, stacklevel=3)
                self._warned_not_pd = True
            W = torch.linalg.pinv(shrunk, hermitian=True) @ M
        b = -0.5 * (M * W).sum(dim=0)
        self._derived['head'] = (W.to(self.dtype), b.to(self.dtype))
        return self._derived['head']

    def decision_function(self, X):
        """Scores (n, C) = X W + b on the CPU; X: (n, d)."""
        return self.predict(X)

    def predict_proba(self, X):
        """Softmax probabilities (n, C) on the CPU; X: (n, d)."""
        return self.predict(X, return_probas=True)

    @torch.no_grad()
    def predict(self, X, return_probas=False):
        """Scores (n, C) = X W + b, or softmax probabilities, on the CPU; X: (n, d). The original's interface:
        ``decision_function`` and ``predict_proba`` say the same by name."""
        X = torch.as_tensor(X)
        if X.dim() != 2 or X.shape[1] != self.input_shape:
            raise ValueError(f'X must have shape (n, {self.input_shape}), got {tuple(X.shape)}')
        W, b = self._classifier()
        if self.mask_unseen_classes:
            b = torch.where(self.cK > 0, b, torch.tensor(float('-inf'), dtype=b.dtype, device=b.device))
        out = torch.empty(X.shape[0], self.num_classes, dtype=self.dtype)
        for start in range(0, X.shape[0], self.test_batch_size):
            chunk = self._check_features(X[start:start + self.test_batch_size])
            scores = chunk @ W + b
            if return_probas:
                scores = torch.softmax(scores, dim=1)
            out[start:start + chunk.shape[0]] = scores.cpu()
        return out

    @property
    def samples_seen(self):
        """Samples fitted so far (``num_updates``), as the baseline output layers of heads.py report it."""
        return int(self.num_updates)

    # ------------------------------------------------------------------ persistence
    def _apply(self, fn, *args, **kwargs):
        self._derived.clear()  # .to()/.cuda()/.double() move or convert the buffers; rebuild the head there
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._derived.clear()
        return super()._load_from_state_dict(*args, **kwargs)

    def checkpoint(self):
        """A CPU copy of the state in the original's file format, unaffected by later updates.

        A dict with ``muK`` (C, d), ``cK`` (C,) as floats, ``Sigma`` (d, d) and ``num_updates`` (int), so the
        original implementation loads it too.
        """
        return {'muK': self.muK.to('cpu', copy=True), 'cK': self.cK.to('cpu', self.dtype, copy=True),
                'Sigma': self.Sigma.to('cpu', copy=True), 'num_updates': int(self.num_updates)}

    def save_model(self, save_path, save_name):
        """Write ``checkpoint()`` to ``save_path/save_name.pth``, atomically; returns the path."""
        os.makedirs(save_path, exist_ok=True)
        path = os.path.join(save_path, save_name + '.pth')
        save_tensor(path, self.checkpoint())
        return path

    @torch.no_grad()
    def load_model(self, save_path, save_name):
        """Load ``save_path/save_name.pth`` written by ``save_model`` or by the original implementation."""
        path = os.path.join(save_path, save_name + '.pth')
        state = safe_torch_load(path)
        if not isinstance(state, dict) or not {'muK', 'cK', 'Sigma', 'num_updates'} <= set(state):
            raise ValueError(f'{path} is not an SLDA checkpoint: expected a dict with muK, cK, Sigma and '
                             f'num_updates')
        C, d = self.num_classes, self.input_shape
        expected = {'muK': (C, d), 'cK': (C,), 'Sigma': (d, d)}
        tensors = {}
        for key, shape in expected.items():
            value = torch.as_tensor(state[key])
            if tuple(value.shape) != shape:
                raise ValueError(f'{path}: {key} has shape {tuple(value.shape)}, this model needs {shape} '
                                 f'(num_classes={C}, input_shape={d})')
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f'{path}: {key} contains NaN or infinite values')
            tensors[key] = value
        counts = tensors['cK'].to(torch.float64)
        if (counts < 0).any() or (counts != counts.round()).any():
            raise ValueError(f'{path}: cK must hold non-negative whole counts')
        num_updates = int(np.asarray(state['num_updates']))
        self._derived.clear()
        self.muK.copy_(tensors['muK'])
        self.cK.copy_(counts.round().to(torch.int64))
        self.Sigma.copy_(tensors['Sigma'])
        self.num_updates.fill_(num_updates)
