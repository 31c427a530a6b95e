"""Streaming Linear Discriminant Analysis (Hayes & Kanan, CVPR-W 2020).

One mean and one count per class and a single covariance matrix shared by all classes, updated one example
at a time in a single pass. ``fit`` applies the paper's per-sample rule to a whole batch at once, exactly:
the model after ``fit(X, y)`` equals the model after calling the per-sample rule on the rows of X in order.
"""
import functools
import math
import operator
import os
import warnings

import numpy as np
import torch
from torch import nn

from errors import InputError
from utils import safe_torch_load, save_tensor

# Rows per vectorised pass of the plastic update inside ``fit``: on the CPU, 2048 rows were the fastest share
# of the GEMM's rate tried (bench/README.md); a GPU wants large passes to amortise kernel launches.
FIT_CHUNK_ROWS = {'cpu': 2048, 'cuda': 65536}
COVARIANCE_UPDATES = ('paper', 'pooled')
# Batches of at most this many rows are fitted one row at a time with in-place rank-1 updates: for a true
# stream, one sample per call, sorting and prefix sums cost more than they save.
FIT_PER_SAMPLE_ROWS = 4
# With a fixed covariance, a batch's rows are centred and summed per class this many bytes of float64 at a time:
# blocks that stay in a core's L2 cache (bench/README.md).
FIT_SUM_BYTES = 2 << 20
# The features' dtypes fit accepts: those torch reduces on every device (it has no aminmax for float8 or uint16-64).
FEATURE_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)
FEATURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64) + FEATURE_INTEGER_DTYPES
# Scores are computed for the seen classes only, but for at least this many columns: MKL's kernels for
# narrower products round differently from the full product's, and at least 16 columns (one AVX-512 register of
# float32) give each score the same bits as the full product.
MIN_SCORED_COLUMNS = 16


@functools.cache
def feature_limit(dtype):
    """The largest feature magnitude a model of this floating ``dtype`` accepts: about 1.8e13 for float32 and
    1.1e71 for float64.

    Sigma holds squares of residuals z - mu_k, each at most 2 * limit in magnitude, and ``fit`` scales it by the
    update count t before dividing again, so the limit is sqrt(largest finite value) / 2^20: t * Sigma stays
    finite for t up to 2^38 (2.7e11) updates, and so do the classifier's weights and scores for any
    shrinkage_param not far below its default. ``fit_base``'s OAS squares the covariance in float64, which caps
    the limit at float64's largest value ** (1 / 4) / 2^20 too.
    """
    largest = min(math.sqrt(torch.finfo(dtype).max), torch.finfo(torch.float64).max ** 0.25)
    return largest * 2.0 ** -20


def numbers_tensor(value):
    """``torch.as_tensor(value)``, also for a NumPy view with negative strides (x[::-1]), which torch refuses:
    such a view is copied. Raises as torch.as_tensor for anything else it cannot take."""
    if isinstance(value, np.ndarray) and any(stride < 0 for stride in value.strides):
        value = value.copy()
    return torch.as_tensor(value)


def as_tensor(value, name):
    """``numbers_tensor(value)``, raising TypeError that names the argument when value is not an array of
    numbers (a string, a ragged list)."""
    try:
        return numbers_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f'{name} must be a tensor or an array of numbers ({error})') from None


def positive_int(value, name):
    """value as a Python int >= 1; TypeError for a non-integer (a float, a bool, a string), ValueError below 1."""
    if isinstance(value, bool):
        raise TypeError(f'{name} must be an integer, got {value!r}')
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f'{name} must be an integer, got {value!r}') from None
    if value < 1:
        raise InputError(f'{name} must be positive, got {value}')
    return value


def usable_device(device, dtype):
    """device as a torch.device after checking that a ``dtype`` value can be stored there and read back: a
    device that is not built into this torch, has no hardware here, lacks the dtype (float64 on MPS) or holds no
    values (meta) raises ValueError naming the argument."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f'device={device!r} is not a device name: use "cpu", "cuda", "cuda:N" or "mps"') from None
    try:
        torch.zeros((), dtype=dtype, device=parsed).item()
    except (RuntimeError, NotImplementedError, AssertionError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f'device={device!r} cannot hold this model here ({reason})') from None
    return parsed


def oas_shrinkage(S, n):
    """The Oracle Approximating Shrinkage coefficient (Chen et al. 2010) of an empirical covariance S (d, d)
    estimated from ``n`` samples, as scikit-learn's ``OAS`` (>= 1.0) computes it: rho in [0, 1] such that the
    estimate is (1 - rho) S + rho (trace(S) / d) I. Computed in float64; a Python float."""
    S = S.to(torch.float64)
    d = S.shape[0]
    mu = torch.trace(S) / d
    alpha = (S ** 2).mean()
    numerator = alpha + mu ** 2
    denominator = (n + 1) * (alpha - mu ** 2 / d)
    return 1.0 if denominator == 0 else min((numerator / denominator).item(), 1.0)


def shrunk_towards_scaled_identity(S, rho):
    """(1 - rho) S + rho (trace(S) / d) I, in S's dtype."""
    eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    return (1.0 - rho) * S + rho * (torch.trace(S) / S.shape[0]) * eye


def oas_covariance(Z):
    """Oracle Approximating Shrinkage estimate of the covariance of centred rows (Chen et al. 2010).

    Follows scikit-learn's ``OAS(assume_centered=True)`` (>= 1.0). Z: (n, d) with n >= 1. Returns (d, d),
    computed in float64.
    """
    Z = Z.to(torch.float64)
    S = Z.T @ Z / Z.shape[0]
    return shrunk_towards_scaled_identity(S, oas_shrinkage(S, Z.shape[0]))


def pooled_scatter_update(means, counts, batch_means, batch_counts, within):
    """Combine per-class statistics exactly (Chan, Golub and LeVeque 1979, the pairwise update): classes with
    ``counts`` (K,) and ``means`` (K, d), and new data with ``batch_counts`` (K,), ``batch_means`` (K, d) and
    within-class scatter ``within`` (d, d) around those batch means. Returns (the scatter to add to the pooled
    within-class scatter, the combined means (K, d), the combined counts (K,)), all float64:
    within + sum_k (c_k n_k / (c_k + n_k)) (b_k - mu_k)(b_k - mu_k)^T."""
    counts, batch_counts = counts.to(torch.float64), batch_counts.to(torch.float64)
    total = counts + batch_counts
    shift = batch_means - means
    weight = torch.where(total > 0, counts * batch_counts / total.clamp(min=1), 0.0)
    scatter = within + (shift * weight[:, None]).T @ shift
    combined = means + shift * torch.where(total > 0, batch_counts / total.clamp(min=1), 0.0)[:, None]
    return scatter, combined, total


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


def prefix_sums(rows, block=32, out=None):
    """(B + 1, d) float64 sums of the first i rows, i = 0..B. Differences of it give sums over runs of rows
    without atomic additions, so results are the same from run to run on any device. ``out``: a float64
    (B + 1, d) tensor to write them into (a reused buffer spares the allocation), else a new one.

    Summed within blocks of ``block`` rows, then the blocks' totals carried over: the same sums as one
    cumsum down the rows. Within the blocks, one addition per row position, each over every block's row at once:
    on the CPU 3-7x faster than ``torch.cumsum`` down the rows, which runs element by element.
    """
    n, d = rows.shape
    prefix = torch.empty(n + 1, d, dtype=torch.float64, device=rows.device) if out is None else out
    prefix[0] = 0
    sums = prefix[1:]
    whole = n - n % block
    if whole:
        within, source = sums[:whole].view(-1, block, d), rows[:whole].reshape(-1, block, d)
        within[:, 0] = source[:, 0]
        for i in range(1, block):
            torch.add(within[:, i - 1], source[:, i], out=within[:, i])
        within[1:] += within[:-1, -1].cumsum(dim=0)[:, None]
    if whole < n:
        torch.cumsum(rows[whole:], dim=0, dtype=torch.float64, out=sums[whole:])
        if whole:
            sums[whole:] += sums[whole - 1]
    return prefix


def host_empty(shape, dtype):
    """An uninitialised tensor of ``shape`` and ``dtype`` (float32 or float64) in host memory that NumPy
    allocated. For large arrays NumPy asks Linux for transparent huge pages (madvise), which torch.empty does
    not: the first write into a large score matrix then faults in 2 MB pages instead of 4 KB ones, a fraction of
    the time (bench/README.md, scoring)."""
    return torch.from_numpy(np.empty(shape, dtype=np.float32 if dtype == torch.float32 else np.float64))


def add_rows(sums, index, rows):
    """sums[index[i]] += rows[i] for every row i, in place, the same from run to run. sums: (R, d); index: (n,)
    int64 in [0, R); rows: (n, d) of sums' dtype. On the CPU ``index_add_`` adds the rows in order; on a GPU it
    uses atomic additions in a varying order, so there ``index_put_`` with accumulate=True, which sorts them, does
    it (PyTorch's notes on ``torch.use_deterministic_algorithms`` list which is which)."""
    if sums.device.type == 'cpu':
        sums.index_add_(0, index, rows)
    else:
        sums.index_put_((index,), rows, accumulate=True)


def saved_count(value):
    """A count read from a saved state (num_updates, base_samples) as an int, or None when it is not one whole
    number (a string, an array, NaN, 2.5, True)."""
    try:
        number = numbers_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    if number.dim() != 0 or number.dtype == torch.bool or number.is_complex():
        return None
    number = number.item()
    return int(number) if math.isfinite(number) and number == int(number) else None


def memory_range(tensor):
    """[first byte, one past the last byte) of the memory a tensor's elements occupy (torch has no negative
    strides)."""
    start = tensor.data_ptr()
    if tensor.is_contiguous():
        return start, start + tensor.nbytes
    extent = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride())) + 1
    return start, start + extent * tensor.element_size()


class StreamingLDA(nn.Module):
    """Deep SLDA output layer.

    Args:
        input_shape: feature dimension d, a positive int.
        num_classes: number of classes C, a positive int; labels are integers in [0, C). None: the model starts
            with no class and grows when a larger label arrives (means, counts and classifier), ending equal to a
            model declared with the final number of classes.
        test_batch_size: rows scored per step in ``predict``, a positive int.
        shrinkage_param: eps in Lambda = ((1 - eps) Sigma + eps I)^-1, a number in [0, 1]; or ``'oas'``: at
            each rebuild of the classifier, Lambda = ((1 - rho) Sigma + rho (trace(Sigma) / d) I)^-1 with rho the
            Oracle Approximating Shrinkage coefficient of Sigma and the samples behind it (``oas_shrinkage``;
            ``shrinkage_used`` gives the value).
        streaming_update_sigma: True for a plastic covariance updated by every sample; False keeps the
            covariance that ``fit_base`` estimated (or the identity without base initialisation).
        covariance_update: ``'paper'``, the paper's rule (each sample adds (t / (t + 1)) r r^T to t Sigma, with t
            the global count and r its residual from its class mean before it); or ``'pooled'``: Sigma is the exact
            pooled within-class covariance, the within-class scatter over the number of samples (what
            scikit-learn's ``LinearDiscriminantAnalysis(solver='lsqr', store_covariance=True).covariance_`` holds),
            whatever the order of the stream, so that two models fitted on shards ``merge`` into one fitted on
            both.
        device: where the state lives and the math runs; CUDA when available, else the CPU.
        dtype: float32 (default) or float64 for the means and covariance.
        mask_unseen_classes: score classes that have no sample yet as -inf. Off by default, as in the
            paper, where an unseen class has mu = 0 and scores exactly 0.

    Raises TypeError for an argument of the wrong type and ValueError for an invalid value, naming it; device
    raises ValueError when the device cannot hold the model here (no such hardware, or float64 on MPS).
    ``shrinkage_param`` and ``test_batch_size`` are checked the same way when set later.

    State (registered buffers, so ``state_dict``, ``.to`` and ``torch.save`` work):
        muK (C, d) class means, cK (C,) int64 counts, Sigma (d, d) shared covariance, num_updates ()
        int64 number of samples seen, always the sum of cK.

    Features must be finite and within +-``feature_limit(dtype)`` (about 1.8e13 in float32, 1.1e71 in
    float64), where the covariance cannot overflow; ``fit``, ``fit_base`` and ``predict`` raise ValueError for
    others.

    Sigma starts as the identity. The original started it as a matrix of ones: with a plastic covariance
    the first update multiplies it by t = 0 so the start does not matter, but with a fixed covariance and
    no base initialisation (or a predict before any fit) the all-ones matrix gives a precision of about
    (I - 11^T / d) / shrinkage, a nearest-class-mean rule on features with their mean over dimensions
    removed, while the identity gives plain nearest class mean.
    """

    def __init__(self, input_shape, num_classes, test_batch_size=1024, shrinkage_param=1e-4,
                 streaming_update_sigma=True, device=None, dtype=torch.float32, mask_unseen_classes=False,
                 covariance_update='paper'):
        super().__init__()
        self.input_shape = positive_int(input_shape, 'input_shape')
        self.grows = num_classes is None
        self.num_classes = 0 if self.grows else positive_int(num_classes, 'num_classes')
        if covariance_update not in COVARIANCE_UPDATES:
            raise InputError(f'covariance_update must be one of {", ".join(COVARIANCE_UPDATES)}, got '
                             f'{covariance_update!r}')
        self.covariance_update = covariance_update
        self.test_batch_size = test_batch_size
        self.shrinkage_param = shrinkage_param
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f'dtype must be torch.float32 or torch.float64, got {dtype}')
        if device is None:
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        device = usable_device(device, dtype)
        self.streaming_update_sigma = bool(streaming_update_sigma)
        self.mask_unseen_classes = bool(mask_unseen_classes)
        d, C = self.input_shape, self.num_classes
        self.register_buffer('muK', torch.zeros(C, d, dtype=dtype, device=device))
        self.register_buffer('cK', torch.zeros(C, dtype=torch.int64, device=device))
        self.register_buffer('Sigma', torch.eye(d, dtype=dtype, device=device))
        self.register_buffer('num_updates', torch.zeros((), dtype=torch.int64, device=device))
        # the samples behind a fixed covariance (fit_base's), which shrinkage_param='oas' depends on
        self.register_buffer('base_samples', torch.zeros((), dtype=torch.int64, device=device))
        # The linear classifier derived from muK, Sigma and shrinkage_param, with what it was derived from:
        # see _classifier. A dict so that updating it is not an nn.Module attribute assignment.
        self._derived = {}
        self._warned_not_pd = False

    @property
    def shrinkage_param(self):
        return self._shrinkage_param

    @shrinkage_param.setter
    def shrinkage_param(self, value):
        if isinstance(value, str) and value == 'oas':
            self._shrinkage_param = value
            return
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f'shrinkage_param must be a number in [0, 1] or \'oas\', got {value!r}') from None
        if not 0.0 <= value <= 1.0:
            raise InputError(f'shrinkage_param must be in [0, 1], got {value}')
        self._shrinkage_param = value

    @property
    def test_batch_size(self):
        return self._test_batch_size

    @test_batch_size.setter
    def test_batch_size(self, value):
        self._test_batch_size = positive_int(value, 'test_batch_size')

    @property
    def device(self):
        return self.muK.device

    @property
    def dtype(self):
        return self.muK.dtype

    def extra_repr(self):
        return (f'input_shape={self.input_shape}, num_classes={self.num_classes}, '
                f'shrinkage_param={self.shrinkage_param}, streaming_update_sigma={self.streaming_update_sigma}, '
                f'covariance_update={self.covariance_update!r}')

    # ------------------------------------------------------------------ input validation
    def _check_features(self, X, name, convert=True, first_row=0):
        """X, a tensor (n, d) or (d,), kept in its shape, converted to the model's device and dtype unless
        ``convert`` is False. Raises ValueError for another shape, NaN, infinity or values beyond
        ``feature_limit`` (naming the row, counted from ``first_row`` when X is a slice of the caller's rows),
        TypeError for a dtype not in FEATURE_DTYPES."""
        if X.dim() not in (1, 2) or X.shape[-1] != self.input_shape:
            raise InputError(f'{name} must have shape (n, {self.input_shape}) or ({self.input_shape},), '
                             f'got {tuple(X.shape)}')
        if X.dtype not in FEATURE_DTYPES:
            raise TypeError(f'{name} must be float16, bfloat16, float32, float64, int8, int16, int32, int64 or uint8, '
                            f'got dtype {X.dtype}; convert it with .float()')
        # Checked in X's own dtype, before any conversion, against a limit far inside the model dtype's range:
        # a value within it stays finite once converted, so the check holds for the converted rows too (a
        # float64 value beyond float32's range is beyond the limit). aminmax is one cheap reduction, allocates
        # nothing of X's size and propagates NaN.
        muK = self._buffers['muK']
        limit = feature_limit(muK.dtype)
        low, high = (value.item() for value in torch.aminmax(X)) if X.numel() else (0, 0)
        if not -limit <= low <= high <= limit:
            rows = X.reshape(-1, self.input_shape)
            non_finite = ~torch.isfinite(rows).all(dim=1)
            if non_finite.any():
                raise InputError(f'{name} contains NaN or infinite values (first in row '
                                 f'{first_row + torch.nonzero(non_finite)[0].item()})')
            first = first_row + torch.nonzero((rows.abs() > limit).any(dim=1))[0].item()
            raise InputError(f'{name} has values beyond +-{limit:.3g}, where the {muK.dtype} covariance '
                             f'would overflow (first in row {first}); scale the features or use '
                             f'dtype=torch.float64')
        if convert:
            X = X.to(device=muK.device, dtype=muK.dtype)
        return X

    def _check_labels(self, y, rows, features_name):
        """y as a 1-D integer tensor of ``rows`` labels, where it is; the range is checked by the caller."""
        y = as_tensor(y, 'y')
        if y.dim() == 0:
            y = y.unsqueeze(0)
        if y.dim() != 1:
            raise InputError(f'y must be a scalar or a 1-D vector of labels, got shape {tuple(y.shape)}')
        # An empty list becomes a float32 tensor: with no labels there is no dtype to object to.
        if y.numel() and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
            raise TypeError(f'y must hold integer class labels, got dtype {y.dtype}')
        if y.shape[0] != rows:
            raise InputError(f'{features_name} has {rows} rows but y has {y.shape[0]} labels')
        if y.dtype in (torch.uint32, torch.uint64) and y.numel():     # torch has no max for these: NumPy's
            largest = int(y.cpu().numpy().max())
            if largest > torch.iinfo(torch.int64).max:          # it would wrap round to a negative int64
                raise self._label_outside(largest)
        return y

    def _label_outside(self, label):
        return InputError(f'y holds label {label}, outside [0, num_classes={self.num_classes})')

    def _label_limit(self):
        """Labels must be below this: num_classes, or no limit for a model that grows."""
        return math.inf if self.grows else self.num_classes

    def _unaliased(self, X):
        """X, or a copy of it when its elements lie in the memory of the model's state (fit(model.muK, ...), a
        NumPy view of Sigma): updates change the state in steps and read rows between them, so such rows
        must be read as given."""
        buffers = self._buffers
        muK, Sigma = buffers['muK'], buffers['Sigma']
        if X.device != muK.device:
            return X
        start, end = memory_range(X)
        for buffer in (muK, Sigma):
            first = buffer.data_ptr()
            if start < first + buffer.nbytes and first < end:
                return X.clone()
        return X

    def _check_batch(self, X, y, name, convert=True):
        X = self._unaliased(self._check_features(X, name, convert=convert).reshape(-1, self.input_shape))
        y = self._check_labels(y, X.shape[0], name).to(device=self.device, dtype=torch.int64)
        limit = self._label_limit()
        if y.numel() and (y.min() < 0 or y.max() >= limit):
            raise self._label_outside(y[(y < 0) | (y >= limit)][0].item())
        if y.numel():
            self._grow_to(int(y.max()) + 1)
        return X, y

    def _check_few(self, X, y, name):
        """Validation for the per-sample path: the rows of X as (d,) tensors on the model's device and dtype,
        the labels as Python ints. A label given as a Python int (a stream's usual one) skips the tensor
        conversion."""
        X = self._unaliased(self._check_features(X, name))
        rows = (X,) if X.dim() == 1 else X.unbind(0)
        labels = [y] if type(y) is int and len(rows) == 1 else self._check_labels(y, len(rows), name).tolist()
        for label in labels:
            if not 0 <= label < self._label_limit():
                raise self._label_outside(label)
        self._grow_to(max(labels) + 1)
        return rows, labels

    def _take_class_count(self, num_classes):
        """A growing model about to load a saved state of ``num_classes`` classes takes that many (zeroed)."""
        if self.grows and num_classes != self.num_classes:
            self.muK = self.muK.new_zeros(num_classes, self.input_shape)
            self.cK = self.cK.new_zeros(num_classes)
            self.num_classes = num_classes

    def _grow_to(self, num_classes):
        """A growing model (num_classes=None) gets classes up to ``num_classes``, with zero means and counts;
        called once its input has passed every check, so that a refused update changes nothing."""
        if not self.grows or num_classes <= self.num_classes:
            return
        extra = num_classes - self.num_classes
        needed = num_classes * self.input_shape * self.muK.element_size()
        too_large = InputError(f'y holds label {num_classes - 1}: a growing model would need {num_classes} class '
                               f'means of {self.input_shape} values ({needed / 2 ** 30:.3g} GiB), more than the '
                               f'{self.device.type} memory can hold')
        if needed >= 2 ** 50:         # beyond any machine, and near where torch's size arithmetic overflows
            raise too_large
        try:
            muK = torch.cat([self.muK, self.muK.new_zeros(extra, self.input_shape)])
            cK = torch.cat([self.cK, self.cK.new_zeros(extra)])
        except RuntimeError as error:     # a stray label (2^40, say) asks for more memory than there is
            if 'allocate' not in str(error):
                raise
            raise too_large from None
        self.muK, self.cK, self.num_classes = muK, cK, num_classes

    # ------------------------------------------------------------------ training
    def fit(self, x, y):
        """Stream samples into the model: one sample (x: (d,), y: scalar) or a batch (x: (B, d), y: (B,)).
        Returns the model.

        The result equals applying the paper's per-sample rule (Hayes & Kanan 2020) to the rows in order:
        with S = t Sigma, each sample adds (t / (t + 1)) r r^T to S, where t is the
        global update count before the sample and r = z - (its class mean before the sample), then
        mu_k <- mu_k + (z - mu_k) / (c_k + 1). A few rows (a true stream's one sample per call) are updated in
        place one at a time; a larger batch in vectorised passes, which give the same model to rounding error.
        With a fixed covariance a batch costs O(B d): only the per-class sums and counts are touched. An empty
        batch (y may be an empty list) is a no-op. X may be float16 or on another device: each pass converts
        only its rows.

        A larger batch is applied in steps (passes of rows; with a fixed covariance, classes as their rows are
        summed): an exception raised inside it after validation, such as a KeyboardInterrupt, can leave part of
        the batch applied.

        Raises, before anything changes: ValueError naming x for a shape other than (B, d) or (d,) (a scalar
        is not a sample, even when d = 1), NaN, infinity or values beyond ``feature_limit``; ValueError naming
        y for a label outside [0, num_classes) or a count other than B; TypeError for non-numeric x or y.
        """
        X = as_tensor(x, 'x').detach()     # the buffers need no grad: with X detached, nothing is recorded
        # A fixed covariance leaves only the class means to update, the same for either covariance_update
        pooled = self.covariance_update == 'pooled' and self.streaming_update_sigma
        if 0 < (X.shape[0] if X.dim() == 2 else 1) <= FIT_PER_SAMPLE_ROWS:
            (self._fit_pooled_samples if pooled else self._fit_samples)(*self._check_few(X, y, 'x'))
            return self
        if pooled:
            return self._fit_pooled(X, y)
        X, y = self._check_batch(X, y, 'x', convert=False)
        if X.shape[0] == 0:
            return self
        chunk = FIT_CHUNK_ROWS.get(self.device.type, FIT_CHUNK_ROWS['cuda'])
        if self.streaming_update_sigma:
            self._fit_plastic(X, y, chunk)
        else:
            self._fit_means(X, y, chunk)
        return self

    def _fit_samples(self, rows, labels):
        """The per-sample rule row by row, in place: Sigma <- (t / (t + 1)) Sigma + (t / (t + 1)^2) r r^T with
        r = z - mu_k, then mu_k <- mu_k + (z - mu_k) / (c_k + 1)."""
        buffers = self._buffers
        muK, cK, Sigma, num_updates = buffers['muK'], buffers['cK'], buffers['Sigma'], buffers['num_updates']
        plastic = self.streaming_update_sigma
        t = int(num_updates) if plastic else 0
        for z, label in zip(rows, labels):
            mean, count = muK[label], cK[label]
            if plastic:
                residual = z - mean
                Sigma.addr_(residual, residual, beta=t / (t + 1), alpha=t / (t + 1) ** 2)
                t += 1
            mean.lerp_(z, 1 / (count.item() + 1))
            count.add_(1)
        num_updates.add_(len(labels))

    def _fit_means(self, X, y, chunk):
        """A batch with a fixed covariance: mu_k <- mu_k + sum(z - mu_k) / (c_k + n_k) over the n_k rows of
        class k, the per-sample rule's result, with mu_k the mean before the batch; nothing of size d x d is
        touched.

        The rows, in class-sorted order (stable, so each class keeps its stream order; stream order itself when
        each class's rows are already together), go through a few reused cache-sized buffers (at most ``chunk``
        rows, FIT_SUM_BYTES of float64) a block at a time: centred on their class mean in the model's dtype (as
        the per-sample rule's z - mu_k), summed per class in float64 in stream order (``add_rows``), and each
        class whose rows are all summed updates its mean at once. A class whose rows continue into the next block
        carries its partial sum there. Besides the sort's index arrays, nothing grows with the batch or the
        number of classes."""
        order, starts, lengths, labels = class_runs(y)
        n, d, device = X.shape[0], self.input_shape, self.device
        changes = y[1:] != y[:-1]
        if int(changes.sum()) + 1 == len(labels):
            # Each class's rows are together already (as a class-incremental batch streams them): its runs in
            # stream order, read where they are, without gathering the rows into class order.
            starts = torch.cat([starts.new_zeros(1), torch.nonzero(changes).squeeze(1) + 1])
            lengths = torch.diff(starts, append=starts.new_full((1,), n))
            order, labels = None, y[starts]
        rows = max(1, min(chunk, n, FIT_SUM_BYTES // (8 * d)))
        block = torch.empty(rows, d, dtype=self.dtype, device=device)
        means = torch.empty(rows, d, dtype=self.dtype, device=device)
        centred = torch.empty(rows, d, dtype=torch.float64, device=device)
        sums = torch.zeros(rows, d, dtype=torch.float64, device=device)
        run_of_row = torch.repeat_interleave(torch.arange(len(labels), device=device), lengths)
        run_starts, run_ends, run_lengths = starts.tolist(), (starts + lengths).tolist(), lengths.tolist()
        # Each class is one run, so its count after the batch is known before any of its rows is summed.
        new_counts = torch.index_select(self.cK, 0, labels) + lengths
        y_in_order = y if order is None else y[order]
        source_order = None if order is None else order.to(X.device)
        same_kind = X.device == device and X.dtype == self.dtype
        first_run = 0                                   # the first run not finished before this block
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            m = stop - start
            if source_order is None:
                rows_in_order = X[start:stop] if same_kind else block[:m].copy_(X[start:stop])
            elif same_kind:
                rows_in_order = torch.index_select(X, 0, source_order[start:stop], out=block[:m])
            else:
                rows_in_order = block[:m].copy_(X[source_order[start:stop]])
            torch.index_select(self.muK, 0, y_in_order[start:stop], out=means[:m])
            torch.sub(rows_in_order, means[:m], out=centred[:m])     # computed in the model's dtype, stored in float64
            add_rows(sums, run_of_row[start:stop] - first_run, centred[:m])
            finished = first_run
            while finished < len(run_ends) and run_ends[finished] <= stop:
                finished += 1
            done = finished - first_run
            if done:
                runs = slice(first_run, finished)
                self._add_class_sums(labels[runs], new_counts[runs], sums[:done], sum(run_lengths[runs]),
                                     means=means[:done])
            if finished < len(run_ends) and run_starts[finished] < stop:    # continues: its sum moves to slot 0
                carried = finished - first_run
                sums[0].copy_(sums[carried])
                sums[1:carried + 1].zero_()
            else:
                sums[:done].zero_()
            first_run = finished

    def _add_class_sums(self, labels, new_counts, sums, added, means=None):
        """mu_k <- mu_k + sums_k / new_counts_k in float64 and c_k <- new_counts_k for the classes ``labels`` (R,),
        with ``sums`` (R, d) the float64 sums of their new rows centred on mu_k (overwritten) and ``new_counts``
        (R,) their counts with those rows; num_updates grows by ``added``. ``means``: an (R, d) buffer of the
        model's dtype to gather the old means into, else a new one."""
        old_means = torch.index_select(self.muK, 0, labels, out=means)
        self.muK.index_copy_(0, labels, sums.div_(new_counts.to(torch.float64)[:, None]).add_(old_means).to(self.dtype))
        self.cK.index_copy_(0, labels, new_counts)
        self.num_updates.add_(added)

    def _fit_plastic(self, X, y, chunk):
        """A batch with a plastic covariance, ``chunk`` rows per vectorised pass (``_fit_chunk``), through
        work buffers allocated once per call and reused by every pass."""
        rows = min(chunk, X.shape[0])
        d, device = self.input_shape, self.device
        work = {'rows': torch.empty(rows, d, dtype=self.dtype, device=device),
                'shifts': torch.empty(rows, d, dtype=self.dtype, device=device),
                'prefix': torch.empty(rows + 1, d, dtype=torch.float64, device=device),
                'wide': torch.empty(rows, d, dtype=torch.float64, device=device),
                'scatter': torch.empty(d, d, dtype=self.dtype, device=device)}
        t = int(self.num_updates)
        for start in range(0, X.shape[0], chunk):
            block = X[start:start + chunk].to(device=device, dtype=self.dtype)
            self._fit_chunk(block, y[start:start + chunk], t + start, work)

    def _fit_chunk(self, X, y, t0, work):
        """One vectorised pass of the plastic update over B rows; t0 is the number of updates before it and
        ``work`` holds ``_fit_plastic``'s buffers (at least B rows each).

        In class-sorted order (stable, so each class keeps its stream order), with u = z - mu_k the rows
        centred on the class mean before the pass, a row's class mean before it is mu_k + Q / (c_k + n), Q the
        sum of the u of the n earlier same-class rows of the pass (float64 prefix sums). Its residual is
        r = u - Q / (c_k + n), and S = t Sigma gains R^T diag(w) R, w = t / (t + 1) per row, in one GEMM.
        """
        B = X.shape[0]
        order, starts, lengths, labels = class_runs(y)
        y_sorted = y[order]
        u, shifts, wide = work['rows'][:B], work['shifts'][:B], work['wide'][:B]
        torch.index_select(X, 0, order, out=u)
        u.sub_(torch.index_select(self.muK, 0, y_sorted, out=shifts))
        prefix = prefix_sums(u, out=work['prefix'][:B + 1])
        first_row = starts.repeat_interleave(lengths)
        seen_before = self.cK[y_sorted] + (torch.arange(B, device=X.device) - first_row)
        torch.sub(prefix[:-1], torch.index_select(prefix, 0, first_row, out=wide), out=wide)
        wide.div_(seen_before.clamp(min=1).to(torch.float64)[:, None])
        u.sub_(shifts.copy_(wide))                       # u now holds the residuals r
        steps = (t0 + order).to(torch.float64)           # global step of each row in stream order
        weights = (steps / (steps + 1)).to(self.dtype)
        scatter = torch.mm(torch.mul(u, weights[:, None], out=shifts).T, u, out=work['scatter'])
        self.Sigma.mul_(t0).add_(scatter).div_(t0 + B)
        self._add_class_sums(labels, self.cK[labels] + lengths, prefix[starts + lengths] - prefix[starts], B)

    def _fit_pooled_samples(self, rows, labels):
        """covariance_update='pooled' with a plastic covariance, row by row, in place (Welford's update per
        class): with r = z - mu_k and c = c_k before the sample and N samples in all,
        Sigma <- (N Sigma + (c / (c + 1)) r r^T) / (N + 1), then mu_k <- mu_k + r / (c + 1)."""
        seen = int(self.num_updates)
        for z, label in zip(rows, labels):
            mean, count = self.muK[label], int(self.cK[label])
            residual = z - mean
            self.Sigma.addr_(residual, residual, beta=seen / (seen + 1), alpha=count / ((count + 1) * (seen + 1)))
            mean.lerp_(z, 1 / (count + 1))
            self.cK[label] += 1
            seen += 1
        self.num_updates.fill_(seen)

    def _fit_pooled(self, X, y):
        """``fit`` with covariance_update='pooled' and a plastic covariance: per chunk, the class means, counts
        and pooled scatter combined exactly with the chunk's (``pooled_scatter_update``), in float64;
        Sigma = scatter / samples."""
        X, y = self._check_batch(X, y, 'x', convert=False)
        chunk = FIT_CHUNK_ROWS.get(self.device.type, FIT_CHUNK_ROWS['cuda'])
        for start in range(0, X.shape[0], chunk):
            rows = X[start:start + chunk].to(device=self.device, dtype=torch.float64)
            labels = y[start:start + chunk]
            classes, position, batch_counts = torch.unique(labels, return_inverse=True, return_counts=True)
            sums = torch.zeros(len(classes), self.input_shape, dtype=torch.float64, device=self.device)
            add_rows(sums, position, rows)
            batch_means = sums / batch_counts[:, None]
            centred = rows - batch_means[position]
            scatter, means, counts = pooled_scatter_update(self.muK[classes].to(torch.float64), self.cK[classes],
                                                           batch_means, batch_counts, centred.T @ centred)
            self._take_pooled(classes, int(self.num_updates) * self.Sigma.to(torch.float64) + scatter, means,
                              counts, len(labels))
        return self

    def _take_pooled(self, classes, scatter, means, counts, added):
        """Set the pooled statistics of ``pooled_scatter_update``: the means (K, d) and counts (K,) of
        ``classes`` (an index of muK's rows), ``added`` more samples in all, and Sigma = the whole within-class
        ``scatter`` (d, d, float64) over the samples."""
        samples = int(self.num_updates) + added
        if samples:
            self.Sigma.copy_((scatter / samples).to(self.dtype))
        self.muK[classes] = means.to(self.dtype)
        self.cK[classes] = counts.to(torch.int64)
        self.num_updates += added

    @torch.no_grad()
    def merge(self, other):
        """Add ``other``'s data to this model, exactly: for covariance_update='pooled' with plastic covariances,
        the counts, means and pooled scatter of both combine (Chan, Golub and LeVeque's pairwise update), so that
        models fitted on two shards merge into the model fitted on both, in any order. Settings (shrinkage_param,
        mask_unseen_classes) stay this model's. Returns this model.

        Raises ValueError, leaving both unchanged, for the paper's rule (its covariance depends on the order of
        the stream), a fixed covariance, or models of other feature sizes, class counts (unless this one grows)
        or dtypes; TypeError when ``other`` is not a StreamingLDA."""
        if not isinstance(other, StreamingLDA):
            raise TypeError(f'merge takes a StreamingLDA, got {type(other).__name__}')
        if other is self:
            raise InputError('merge of a model with itself would count its data twice')
        for model in (self, other):
            if model.covariance_update != 'pooled' or not model.streaming_update_sigma:
                raise InputError('merge needs covariance_update=\'pooled\' and a plastic covariance in both models: '
                                 'the paper\'s rule depends on the order of the stream, and a fixed covariance '
                                 'is not the data\'s')
        if other.input_shape != self.input_shape or other.dtype != self.dtype:
            raise InputError(f'merge needs the same input_shape and dtype: {self.input_shape} {self.dtype} here, '
                             f'{other.input_shape} {other.dtype} there')
        if other.num_classes > self.num_classes and not self.grows or \
                other.num_classes < self.num_classes and not other.grows:
            raise InputError(f'merge needs the same num_classes: {self.num_classes} here, {other.num_classes} there')
        self._grow_to(other.num_classes)
        count = other.num_classes
        here, there = int(self.num_updates), int(other.num_updates)
        within = here * self.Sigma.to(torch.float64) + there * other.Sigma.to(self.device, torch.float64)
        scatter, means, counts = pooled_scatter_update(
            self.muK[:count].to(torch.float64), self.cK[:count], other.muK.to(self.device, torch.float64),
            other.cK.to(self.device), within)
        self._take_pooled(slice(0, count), scatter, means, counts, there)
        return self

    @torch.no_grad()
    def fit_base(self, X, y):
        """Base initialisation on all base data at once; replaces the whole state.

        X: (n, d) features, y: (n,) labels. Class means and counts come from the data, num_updates = n, and
        Sigma is the OAS estimate (assume_centered) of the class-centred features z - mu_y(z); with
        covariance_update='pooled', their exact pooled covariance (the maximum-likelihood estimate). Returns the
        model. Raises as ``fit`` does, naming X, and ValueError for an empty batch; a refused batch changes
        nothing.
        """
        X, y = self._check_batch(as_tensor(X, 'X'), y, 'X')
        if X.shape[0] == 0:
            raise InputError('fit_base needs at least one sample, got an empty batch')
        order, starts, lengths, labels = class_runs(y)
        prefix = prefix_sums(X[order])
        means = torch.zeros(self.num_classes, self.input_shape, dtype=torch.float64, device=X.device)
        means[labels] = (prefix[starts + lengths] - prefix[starts]) / lengths[:, None]
        centred = X.to(torch.float64) - means[y]
        sigma = centred.T @ centred / len(y) if self.covariance_update == 'pooled' else oas_covariance(centred)
        self.muK.copy_(means.to(self.dtype))
        self.cK.zero_()
        self.cK[labels] = lengths
        self.Sigma.copy_(sigma.to(self.dtype))
        self.num_updates.fill_(X.shape[0])
        self.base_samples.fill_(X.shape[0])
        return self

    # ------------------------------------------------------------------ prediction
    def _classifier(self):
        """(columns, W (d, k), b (k,)) of the linear classifier for the k classes whose scores are computed,
        computed once per change of the model: ``columns`` (k,) are those classes, the seen ones padded with
        unseen ones to at least ``MIN_SCORED_COLUMNS`` (or to all C), or None for all C classes.

        A class with no sample has mu = 0, so its column of W and its b are exactly 0: its score is 0 without
        computing it. W = Lambda M with Lambda = ((1 - eps) Sigma + eps I)^-1 and b = -mu^T Lambda mu / 2
        (Hayes & Kanan 2020), solved with the Cholesky factor in float64. It depends on muK, cK, Sigma and
        shrinkage_param alone. A buffer can change without this class knowing (assigned anew, edited in place by
        the user), so the cache records which tensors it was derived from and their version counters, which
        every in-place operation advances; comparing them costs nothing per sample, unlike clearing a cache in
        every fit. Edits through ``.data`` or a numpy view of a buffer bypass the version counter and are not
        seen. Tensors made under ``torch.inference_mode`` have no version counter: with such buffers the
        classifier is computed afresh on every call.
        """
        muK, cK, Sigma = self.muK, self.cK, self.Sigma
        trackable = not (muK.is_inference() or cK.is_inference() or Sigma.is_inference())
        stamp = (muK._version, cK._version, Sigma._version, self.shrinkage_param,
                 self.covariance_samples) if trackable else None
        derived = self._derived
        if (trackable and derived and derived['muK'] is muK and derived['cK'] is cK and derived['Sigma'] is Sigma
                and derived['stamp'] == stamp):
            return derived['head']
        seen = cK > 0
        k = max(int(seen.sum()), MIN_SCORED_COLUMNS)
        # The seen classes first, in class order, then the unseen ones: the first k, sorted, are the columns.
        columns = None if k >= self.num_classes else torch.argsort(~seen, stable=True)[:k].sort().values
        shrunk, rho = self.shrunk_covariance()
        M = (muK if columns is None else muK[columns]).to(torch.float64).T
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
        derived.update(muK=muK, cK=cK, Sigma=Sigma, stamp=stamp,
                       head=(columns, W.to(self.dtype), b.to(self.dtype)), shrinkage=rho)
        return derived['head']

    @property
    def covariance_samples(self):
        """The samples behind Sigma: all of them for a plastic covariance, fit_base's for a fixed one."""
        return int(self.num_updates) if self.streaming_update_sigma else int(self.base_samples)

    def shrunk_covariance(self):
        """(the shrunk covariance (d, d) float64 that the classifier and ``mahalanobis`` invert, the shrinkage
        used): (1 - eps) Sigma + eps I, or with shrinkage_param='oas' (1 - rho) Sigma + rho (trace(Sigma) / d) I
        with rho = oas_shrinkage(Sigma, covariance_samples)."""
        Sigma = self.Sigma.to(torch.float64)
        if self.shrinkage_param == 'oas':
            rho = oas_shrinkage(Sigma, max(self.covariance_samples, 1))
            return shrunk_towards_scaled_identity(Sigma, rho), rho
        eye = torch.eye(self.input_shape, dtype=torch.float64, device=self.device)
        return (1 - self.shrinkage_param) * Sigma + self.shrinkage_param * eye, self.shrinkage_param

    @property
    def shrinkage_used(self):
        """The shrinkage of the classifier as last built: shrinkage_param, or the OAS coefficient rho."""
        self._classifier()
        return self._derived['shrinkage']

    def decision_function(self, X):
        """Scores (n, C) = X W + b on the CPU; X: (n, d). Raises as ``predict``."""
        return self.predict(X)

    def predict_proba(self, X):
        """Softmax probabilities (n, C) on the CPU; X: (n, d). Raises as ``predict``."""
        return self.predict(X, return_probas=True)

    @torch.no_grad()
    def predict(self, X, return_probas=False):
        """Scores (n, C) = X W + b, or their softmax probabilities over all C classes, on the CPU; X: (n, d).
        The original's interface: ``decision_function`` and ``predict_proba`` say the same by name.

        Only the seen classes' scores are computed (see ``_classifier``); the others are filled with the value
        the full product gives them, 0 (mu = 0), or -inf with mask_unseen_classes. On the CPU each block of
        ``test_batch_size`` rows is written straight into the output.

        Raises ValueError naming X for another shape, NaN, infinity or values beyond ``feature_limit``,
        TypeError for non-numeric X, and ValueError when mask_unseen_classes is on and no class has a sample
        yet: every class would be masked and the probabilities would be NaN.
        """
        X = self._scoring_input(X)
        columns, W, b = self._classifier()
        fill = 0.0
        if self.mask_unseen_classes:
            seen = self.cK > 0
            if not seen.any():
                raise InputError('mask_unseen_classes=True masks every class until one has a sample: fit the '
                                 'model before predicting')
            fill = float('-inf')
            b = b.masked_fill(~(seen if columns is None else seen[columns]), fill)
        out = host_empty((X.shape[0], self.num_classes), self.dtype)
        on_host = self.device.type == 'cpu'
        # the computed columns of a block, when they are not all: one buffer for every block
        part = None if columns is None else torch.empty(min(self.test_batch_size, X.shape[0]), len(columns),
                                                        dtype=self.dtype, device=self.device)
        for start in range(0, X.shape[0], self.test_batch_size):
            chunk = self._check_features(X[start:start + self.test_batch_size], 'X', first_row=start)
            rows = out[start:start + chunk.shape[0]]
            scores = rows if on_host else torch.empty(rows.shape, dtype=self.dtype, device=self.device)
            if columns is None:
                torch.mm(chunk, W, out=scores).add_(b)
            else:
                scores.fill_(fill).index_copy_(1, columns, torch.mm(chunk, W, out=part[:len(chunk)]).add_(b))
            if return_probas:
                scores = torch.softmax(scores, dim=1)
            if scores is not rows:
                rows.copy_(scores)
        return out

    def _scoring_input(self, X):
        """X as a tensor of shape (n, d), the only shape ``predict`` and ``mahalanobis`` take; ValueError else."""
        X = as_tensor(X, 'X')
        if X.dim() != 2 or X.shape[1] != self.input_shape:
            raise InputError(f'X must have shape (n, {self.input_shape}), got {tuple(X.shape)}')
        return X

    @torch.no_grad()
    def mahalanobis(self, X):
        """Squared Mahalanobis distances (m, C) float64 on the CPU of the rows of X (m, d) to each class mean under
        the shrunk shared covariance, (x - mu_k)^T ((1 - eps) Sigma + eps I)^-1 (x - mu_k); inf for classes not
        seen yet. The smallest distance over the seen classes is a novelty score (Lee et al., NeurIPS 2018, with
        the shared covariance of LDA). Computed in float64 in whitened coordinates L^-1 x, with L the Cholesky
        factor of the shrunk covariance (a pseudo-inverse square root where it is not positive definite).
        Raises as ``predict``."""
        X = self._check_features(self._scoring_input(X), 'X').to(torch.float64)
        eye = torch.eye(self.input_shape, dtype=torch.float64, device=self.device)
        shrunk, _ = self.shrunk_covariance()
        L, info = torch.linalg.cholesky_ex(shrunk)
        means = self.muK.to(torch.float64)
        if int(info) == 0:          # rows @ L^-T: the squared norm of L^-1 (x - mu) is the distance
            root = torch.linalg.solve_triangular(L, eye, upper=False).T
        else:
            values, vectors = torch.linalg.eigh(shrunk)     # pinv's cut-off: what is below it counts as zero
            kept = values > values.abs().max() * self.input_shape * torch.finfo(torch.float64).eps
            root = vectors * torch.where(kept, values.clamp(min=1e-300).rsqrt(), 0.0)
        x, mu = X @ root, means @ root
        distances = (x * x).sum(1, keepdim=True) + (mu * mu).sum(1) - 2 * x @ mu.T
        distances = distances.clamp(min=0)
        distances[:, self.cK == 0] = math.inf
        return distances.cpu()

    @torch.no_grad()
    def to_linear(self):
        """A ``torch.nn.Linear(d, C)`` on the CPU whose outputs equal ``decision_function``: weight W^T, bias b
        of the current classifier (bias -inf for classes not seen yet when mask_unseen_classes is on); a copy,
        unaffected by later updates."""
        columns, W, b = self._classifier()
        with warnings.catch_warnings():     # torch's warning that initialising a model with no class is a no-op
            warnings.filterwarnings('ignore', 'Initializing zero-element tensors', UserWarning)
            # skip_init: the random initialisation that the classifier overwrites runs on the meta device
            linear = nn.utils.skip_init(nn.Linear, self.input_shape, self.num_classes, dtype=self.dtype)
        linear.weight.zero_()       # an unseen class's column: mu = 0, so zero weights and bias
        linear.bias.zero_()
        everything = slice(None) if columns is None else columns.cpu()
        linear.weight[everything] = W.T.cpu()
        linear.bias[everything] = b.cpu()
        if self.mask_unseen_classes:
            linear.bias.masked_fill_(self.cK.cpu() == 0, float('-inf'))
        return linear.requires_grad_(False)

    @property
    def samples_seen(self):
        """Samples fitted so far (``num_updates``), as the baseline output layers of heads.py report it."""
        return int(self.num_updates)

    # ------------------------------------------------------------------ persistence
    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.double() replace the buffers, which the cache notices by itself; emptying it frees
        # its classifier and its references to the old buffers (on the old device) at once.
        self._derived.clear()
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """``nn.Module.load_state_dict``, all or nothing: the state is checked as ``load_model`` checks a file, and
        with ``strict`` the keys too, before any buffer changes (torch's own copies the buffers one by one and
        reports missing or unexpected keys after them). ``base_samples`` may be missing (a state saved before
        it was kept). Raises ValueError naming the key or entry, leaving the model unchanged."""
        if strict:
            expected, given = set(self.state_dict()), set(state_dict)
            missing, unexpected = sorted(expected - given - {'base_samples'}), sorted(given - expected)
            if missing or unexpected:
                raise InputError(f'state_dict: missing keys {missing}, unexpected keys {unexpected} (an SLDA '
                                 f'state has {sorted(expected)})')
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        names = ('muK', 'cK', 'Sigma', 'num_updates')
        present = [name for name in names if prefix + name in state_dict]
        if present and len(present) < len(names):       # even when not strict: the counts must add up
            raise InputError(f'state_dict: has {present} but not {[n for n in names if n not in present]}; an '
                             f'SLDA state is loaded with all of {list(names)} or none')
        if present:
            muK, cK, Sigma, num_updates = self._checked_state({name: state_dict[prefix + name] for name in names},
                                                              'state_dict')
            base_samples = self._checked_base_samples(state_dict.get(prefix + 'base_samples'), num_updates,
                                                      'state_dict')
            # The checked values, as tensors of the buffers' dtypes, so that no copy can fail after another has
            # been made (a model file's num_updates is a Python int); a state saved before base_samples was a
            # buffer gets the fallback.
            state_dict.update({prefix + 'muK': muK, prefix + 'cK': cK, prefix + 'Sigma': Sigma,
                               prefix + 'num_updates': torch.tensor(num_updates),
                               prefix + 'base_samples': torch.tensor(base_samples)})
            self._take_class_count(muK.shape[0])
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _checked_state(self, state, source):
        """(muK, cK, Sigma, num_updates) of a saved ``state`` (a dict with those keys), converted to this
        model's dtypes, after checking that it is a state ``fit`` could have produced; otherwise ValueError
        naming ``source`` and the entry: a shape other than this model's, values that are not real numbers,
        not finite once converted or beyond what features within ``feature_limit`` give (|muK| <= limit,
        |Sigma| <= 4 limit^2), a Sigma that is not symmetric, counts cK that are not whole and non-negative, a
        non-zero mean for a class with no sample, and num_updates other than the sum of cK, which every
        later fit would use as the global step t and so weigh the covariance wrongly."""
        C, d = self.num_classes, self.input_shape
        if self.grows:      # a growing model takes the saved model's classes
            C = len(state['muK']) if hasattr(state['muK'], '__len__') else C
        limit = feature_limit(self.dtype)
        checks = {'muK': ((C, d), self.dtype, limit), 'cK': ((C,), torch.float64, math.inf),
                  'Sigma': ((d, d), self.dtype, 4 * limit ** 2)}
        values = {}
        for key, (shape, dtype, bound) in checks.items():
            try:
                value = numbers_tensor(state[key])
            except (TypeError, ValueError, RuntimeError):
                raise InputError(f'{source}: {key} is not an array of numbers') from None
            if tuple(value.shape) != shape:
                raise InputError(f'{source}: {key} has shape {tuple(value.shape)}, this model needs {shape} '
                                 f'(num_classes={C}, input_shape={d})')
            if value.is_complex() or value.dtype == torch.bool:
                raise InputError(f'{source}: {key} must hold real numbers, got dtype {value.dtype}')
            value = value.to(dtype)
            if not torch.isfinite(value).all():
                raise InputError(f'{source}: {key} contains NaN or infinite values (as {dtype})')
            if (value.abs() > bound).any():
                raise InputError(f'{source}: {key} has values beyond +-{bound:.3g}, more than features within '
                                 f'+-{limit:.3g} give; a later fit would overflow')
            values[key] = value
        muK, counts, Sigma = values['muK'], values['cK'], values['Sigma']
        if (counts < 0).any() or (counts != counts.round()).any():
            raise InputError(f'{source}: cK must hold non-negative whole counts')
        if (muK[counts == 0] != 0).any():
            raise InputError(f'{source}: muK is non-zero for a class whose count cK is 0')
        # fit keeps Sigma symmetric up to the rounding of its matrix products (about 1e-8 of its largest entry
        # in float32); an asymmetric matrix would be read through its lower triangle alone.
        if (Sigma - Sigma.T).abs().max() > 1e-4 * Sigma.abs().max():
            raise InputError(f'{source}: Sigma is not symmetric')
        count_sum = int(counts.sum())
        num_updates = state['num_updates']
        if saved_count(num_updates) != count_sum:
            raise InputError(f'{source}: num_updates must be the number of samples seen, the sum of the class '
                             f'counts cK ({count_sum}), got {num_updates!r}')
        return muK, counts.to(torch.int64), Sigma, count_sum

    @staticmethod
    def _checked_base_samples(value, num_updates, source):
        """The saved ``base_samples`` as an int in [0, num_updates]; num_updates when it was not saved (files of
        the original, or of a model without OAS on a fixed covariance): at most every sample is behind Sigma.
        ValueError naming ``source`` for anything else."""
        if value is None:
            return num_updates
        count = saved_count(value)
        if count is None or not 0 <= count <= num_updates:
            raise InputError(f'{source}: base_samples must be a whole number of samples in [0, num_updates = '
                             f'{num_updates}], got {value!r}')
        return count

    def checkpoint(self):
        """A CPU copy of the state in the original's file format, unaffected by later updates.

        A dict with ``muK`` (C, d), ``cK`` (C,) as floats, ``Sigma`` (d, d) and ``num_updates`` (int), so the
        original implementation loads it too. ``cK`` is in the model's dtype, or float64 once a count is beyond
        the integers that dtype holds exactly (2^24 for float32). With a fixed covariance, also ``base_samples``
        (int), the samples behind Sigma, which shrinkage_param='oas' depends on (the original ignores it).
        """
        exact = self.cK.numel() == 0 or int(self.cK.max()) <= 2 / torch.finfo(self.dtype).eps
        state = {'muK': self.muK.to('cpu', copy=True),
                 'cK': self.cK.to('cpu', self.dtype if exact else torch.float64, copy=True),
                 'Sigma': self.Sigma.to('cpu', copy=True), 'num_updates': int(self.num_updates)}
        if not self.streaming_update_sigma:
            state['base_samples'] = int(self.base_samples)
        return state

    def save_model(self, save_path, save_name):
        """Write ``checkpoint()`` to ``save_path/save_name.pth``, atomically; returns the path."""
        os.makedirs(save_path, exist_ok=True)
        path = os.path.join(save_path, save_name + '.pth')
        save_tensor(path, self.checkpoint())
        return path

    @torch.no_grad()
    def load_model(self, save_path, save_name):
        """Load ``save_path/save_name.pth`` written by ``save_model`` or by the original implementation.

        Raises FileNotFoundError for a missing file, and ValueError, leaving the model unchanged, for a file
        that is not an SLDA checkpoint or holds a state fit could not have produced in this model: other
        shapes, values that are not finite real numbers in the model's dtype or exceed what features within
        ``feature_limit`` give, an asymmetric Sigma, counts cK that are not whole and non-negative, a non-zero
        mean for a class with no sample, or num_updates other than the sum of cK. ``load_state_dict`` checks
        the same.
        """
        path = os.path.join(save_path, save_name + '.pth')
        state = safe_torch_load(path)
        if not isinstance(state, dict) or not {'muK', 'cK', 'Sigma', 'num_updates'} <= set(state):
            raise InputError(f'{path} is not an SLDA checkpoint: expected a dict with muK, cK, Sigma and '
                             f'num_updates')
        muK, cK, Sigma, num_updates = self._checked_state(state, path)
        base_samples = self._checked_base_samples(state.get('base_samples'), num_updates, path)
        self._take_class_count(muK.shape[0])
        self.base_samples.fill_(base_samples)
        self.muK.copy_(muK)
        self.cK.copy_(cK)
        self.Sigma.copy_(Sigma)
        self.num_updates.fill_(num_updates)
