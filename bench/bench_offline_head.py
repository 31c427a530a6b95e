"""What the ``offline`` head (--heads offline) would cost on ImageNet, from a measured scaling.

The offline head retrains a softmax layer with full-batch L-BFGS on every training feature seen so far after
each batch. An L-BFGS iteration costs about one forward and backward pass over all n features, O(n d C). This
script times iterations on random 512-d features of 1000 classes for a few n, fits seconds per iteration
against n, times how many iterations convergence takes at the largest n, and projects ImageNet's run:
after batch i (i = 1..10) n = 128,117 i.

    python bench/bench_offline_head.py                  # about a minute on 2 CPU cores
    python bench/bench_offline_head.py --device cuda
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from heads import OfflineSoftmax  # noqa: E402


def features(n, dim, classes, generator):
    centres = torch.randn(classes, dim, generator=generator)
    y = torch.randint(0, classes, (n,), generator=generator)
    return centres[y] + 2 * torch.randn(n, dim, generator=generator), y


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sizes', type=int, nargs='+', default=[4000, 8000, 16000])
    parser.add_argument('--dim', type=int, default=512)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    per_iteration = {}
    for n in args.sizes:
        X, y = features(n, args.dim, args.classes, generator)
        head = OfflineSoftmax(args.dim, args.classes, args.device, max_iter=5)
        tick = time.perf_counter()
        head.fit(X, y)
        per_iteration[n] = (time.perf_counter() - tick) / 5
        print(f'n = {n:7,}: {per_iteration[n]:.3f} s per L-BFGS iteration (5 iterations)', flush=True)
    largest = max(args.sizes)
    X, y = features(largest, args.dim, args.classes, generator)
    head = OfflineSoftmax(args.dim, args.classes, args.device)
    tick = time.perf_counter()
    head.fit(X, y)
    converged = time.perf_counter() - tick
    iterations = converged / per_iteration[largest]
    seconds_per_sample = per_iteration[largest] / largest         # the largest n amortises fixed costs best
    imagenet = sum(seconds_per_sample * 128_117 * i * iterations for i in range(1, 11))
    print(f'to convergence at n = {largest:,}: {converged:.1f} s, about {iterations:.0f} iterations')
    print(f'seconds per iteration per sample: {seconds_per_sample:.2e} (from n = {largest:,}; linear in n)')
    print(f'projected ImageNet run (10 batches, n = 128,117 i after batch i, {iterations:.0f} iterations each): '
          f'{imagenet / 3600:.1f} hours on {args.device}; at the head\'s limit of {head.max_iter} iterations: '
          f'{imagenet * head.max_iter / iterations / 3600:.0f} hours. Its features need '
          f'{1_281_167 * args.dim * 4 / 2 ** 30:.1f} GiB in float32')


if __name__ == '__main__':
    main()
