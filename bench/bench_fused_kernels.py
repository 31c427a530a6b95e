"""Would compiled kernels meet issue 24's two batched-fit targets? StreamingLDA's batched fit against the same fit
with its per-row steps fused into one compiled pass (numba), bit for bit the same model, in one run.

The project's batched fit is a sequence of torch operations, each a pass over the batch (gathers, centring, float64
prefix sums, residuals, weights). Here the same arithmetic, in the same order, runs as one loop over the rows:

- plastic covariance: one pass per chunk gives each row's residual r and its weighted copy w r (the float64 prefix
  sums in 32-row blocks exactly as ``prefix_sums`` forms them) and each class's sum, then the same GEMM, Sigma and
  mean updates as ``_fit_chunk``;
- fixed covariance: one pass per class (rows in class-sorted order) sums its centred rows in float64 and writes its
  new mean, as ``_fit_means`` does through its blocks.

It checks first that both give the same muK, cK and Sigma bit for bit, then prints samples/s of each beside the
GEMM-only rate (plastic) and one sample per call (fixed): the issue's ratios.

numba is no dependency of the project; install it apart, into the git-ignored bench/.numba:

    .venv/bin/python -m pip install --no-deps --target bench/.numba numba==0.68.1 llvmlite==0.50.0
    .venv/bin/python bench/bench_fused_kernels.py
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE)]
sys.path.append(os.path.join(HERE, '.numba'))
import numba  # noqa: E402

from bench_slda import random_stream  # noqa: E402
from slda_model import FIT_CHUNK_ROWS, StreamingLDA, class_runs  # noqa: E402

PREFIX_BLOCK = 32       # prefix_sums' default block: the kernel must add in the same order


@numba.njit(cache=True, nogil=True)
def plastic_pass(X, order, y_sorted, starts, lengths, muK, cK, weights, R, RW, run_sums):
    """One pass over a chunk's B rows in class-sorted order; fills R (B, d) residuals, RW (B, d) = R * weights and
    run_sums (runs, d) float64 with each class's sum of centred rows, as ``_fit_chunk``'s torch steps do."""
    B, d = X.shape
    whole = B - B % PREFIX_BLOCK
    within = np.zeros(d, np.float64)    # the running sum inside the current block (prefix_sums' ``within``)
    carry = np.zeros(d, np.float64)     # the blocks' totals before it (its cumsum)
    prefix = np.zeros(d, np.float64)    # the sum of the rows before the current one
    run_start = np.zeros(d, np.float64)
    at_whole = np.zeros(d, np.float64)
    run = 0
    for i in range(B):
        if i == starts[run]:
            run_start[:] = prefix
        mean, x = muK[y_sorted[i]], X[order[i]]
        seen = np.float64(max(cK[y_sorted[i]] + (i - starts[run]), 1))
        r = R[i]
        for j in range(d):
            r[j] = (prefix[j] - run_start[j]) / seen        # the class mean's shift, rounded to the model's dtype
        first_of_block = i < whole and i % PREFIX_BLOCK == 0
        if first_of_block and i >= PREFIX_BLOCK:
            for j in range(d):
                carry[j] = carry[j] + within[j]
        if i == whole:
            within[:] = 0.0
        for j in range(d):
            u = x[j] - mean[j]
            r[j] = u - r[j]
            within[j] = np.float64(u) if first_of_block else within[j] + np.float64(u)
        if i < PREFIX_BLOCK and i < whole:
            prefix[:] = within
        elif i < whole:
            for j in range(d):
                prefix[j] = within[j] + carry[j]
        elif whole:
            for j in range(d):
                prefix[j] = within[j] + at_whole[j]
        else:
            prefix[:] = within
        if i == whole - 1:
            at_whole[:] = prefix
        w, rw = weights[i], RW[i]
        for j in range(d):
            rw[j] = r[j] * w
        if i == starts[run] + lengths[run] - 1:
            for j in range(d):
                run_sums[run, j] = prefix[j] - run_start[j]
            run += 1


@numba.njit(cache=True, nogil=True)
def class_means(X, order, starts, lengths, labels, muK, cK, new_means):
    """Each class's new mean (runs, d): its rows' sum of z - mu_k in float64 in stream order, over its count after
    them, plus mu_k, as ``_fit_means`` computes it."""
    d = X.shape[1]
    total = np.empty(d, np.float64)
    for run in range(len(starts)):
        mean = muK[labels[run]]
        total[:] = 0.0
        for i in range(starts[run], starts[run] + lengths[run]):
            x = X[order[i]]
            for j in range(d):
                total[j] += np.float64(x[j] - mean[j])
        count = np.float64(cK[labels[run]] + lengths[run])
        out = new_means[run]
        for j in range(d):
            out[j] = total[j] / count + np.float64(mean[j])


class FusedStreamingLDA(StreamingLDA):
    """StreamingLDA whose batched steps run as the kernels above (CPU, contiguous tensors)."""

    def _fit_chunk(self, X, y, t0, work):
        B = X.shape[0]
        order, starts, lengths, labels = class_runs(y)
        R, RW, run_sums = work['rows'][:B], work['shifts'][:B], work['prefix'][:len(labels)]
        steps = (t0 + order).to(torch.float64)
        weights = (steps / (steps + 1)).to(self.dtype)
        plastic_pass(X.contiguous().numpy(), order.numpy(), y[order].numpy(), starts.numpy(), lengths.numpy(),
                     self.muK.numpy(), self.cK.numpy(), weights.numpy(), R.numpy(), RW.numpy(), run_sums.numpy())
        scatter = torch.mm(RW.T, R, out=work['scatter'])
        self.Sigma.mul_(t0).add_(scatter).div_(t0 + B)
        self._add_class_sums(labels, self.cK[labels] + lengths, run_sums, B)

    def _fit_means(self, X, y, chunk):
        order, starts, lengths, labels = class_runs(y)
        new_means = torch.empty(len(labels), self.input_shape, dtype=self.dtype)
        class_means(X.to(self.dtype).contiguous().numpy(), order.numpy(), starts.numpy(), lengths.numpy(),
                    labels.numpy(), self.muK.numpy(), self.cK.numpy(), new_means.numpy())
        self.muK.index_copy_(0, labels, new_means)
        self.cK.index_add_(0, labels, lengths)
        self.num_updates.add_(len(y))


def bits(tensor):
    return tensor.view(torch.int32 if tensor.dtype == torch.float32 else torch.int64)


def rate(make, X, y, repeats):
    """samples/s of one fit of (X, y) on a fresh model, fastest of ``repeats``."""
    best = float('inf')
    for _ in range(repeats):
        model = make()
        tick = time.perf_counter()
        model.fit(X, y)
        best = min(best, time.perf_counter() - tick)
    return len(y) / best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', nargs='+', default=['512x1000', '512x10000', '2048x1000', '2048x10000'],
                        help='d x C pairs')
    parser.add_argument('--samples', type=int, default=20_000, help='rows of the batched fit')
    parser.add_argument('--repeats', type=int, default=3, help='runs of each; the fastest is reported')
    args = parser.parse_args()
    print(f'{torch.get_num_threads()} torch threads, numba {numba.__version__} (one thread), samples/s, fastest of '
          f'{args.repeats}')
    print(f'{"d":>5} {"C":>6} {"covariance":>10} {"torch":>10} {"fused":>10} {"limit":>10}  torch/limit  fused/limit  '
          'same bits')
    for size in args.sizes:
        d, classes = (int(part) for part in size.split('x'))
        X, y = random_stream(args.samples, d, classes)
        for plastic in (True, False):
            def make(cls=StreamingLDA):
                return cls(d, classes, streaming_update_sigma=plastic, device='cpu').fit(X[:100] * 2, y[:100])
            ours, fused = make().fit(X, y), make(FusedStreamingLDA).fit(X, y)
            same = all(torch.equal(bits(getattr(ours, name)), bits(getattr(fused, name))) for name in ('muK', 'Sigma'))
            same = same and torch.equal(ours.cK, fused.cK)
            torch_rate = rate(make, X, y, args.repeats)
            fused_rate = rate(lambda: make(FusedStreamingLDA), X, y, args.repeats)
            if plastic:         # the GEMM-only rate: the pass's one product alone
                rows = torch.randn(FIT_CHUNK_ROWS['cpu'], d)
                best = float('inf')
                for _ in range(args.repeats):
                    tick = time.perf_counter()
                    torch.mm(rows.T, rows)
                    best = min(best, time.perf_counter() - tick)
                limit = len(rows) / best
            else:               # one sample per call: the issue asks the batch for 10x it
                model, labels = make(), y[:2000].tolist()
                tick = time.perf_counter()
                for row, label in zip(X[:2000], labels):
                    model.fit(row, label)
                limit = 2000 / (time.perf_counter() - tick)
            share = (lambda r: f'{100 * r / limit:10.0f}%') if plastic else (lambda r: f'{r / limit:10.1f}x')
            print(f'{d:>5} {classes:>6} {"plastic" if plastic else "fixed":>10} {torch_rate:>10,.0f} '
                  f'{fused_rate:>10,.0f} {limit:>10,.0f}  {share(torch_rate)}  {share(fused_rate)}  {same}')


if __name__ == '__main__':
    main()
