"""The output-layer options beyond the paper, side by side in one run:

1. speed: ``StreamingLDA.fit`` with covariance_update='pooled' beside the paper's rule, one sample per call and
   in batches (samples/s), and the cost of --random_projection M (projecting the features, then fitting SLDA on
   M dimensions) for M = 2,000, 5,000 and 10,000;
2. accuracy: final top-1 of the paper's rule, pooled, OAS shrinkage, both, and a random projection, on the
   digits (experiment.py, one feature cache for every run) and on a synthetic Gaussian stream.

    python bench/bench_output_options.py                 # a few minutes on 2 cores
    python bench/bench_output_options.py --skip_accuracy --dims 512 --samples 20000
"""
import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiment import main as run_experiment  # noqa: E402
from projection import RandomProjection  # noqa: E402
from slda_model import StreamingLDA  # noqa: E402

VARIANTS = {  # name: (StreamingLDA options, experiment.py flags)
    'paper (default)': ({}, []),
    'pooled': ({'covariance_update': 'pooled'}, ['--covariance_update', 'pooled']),
    'paper + oas': ({'shrinkage_param': 'oas'}, ['--shrinkage', 'oas']),
    'pooled + oas': ({'covariance_update': 'pooled', 'shrinkage_param': 'oas'},
                     ['--covariance_update', 'pooled', '--shrinkage', 'oas']),
}


def rate(model, X, y, per_call):
    """Samples/s of fitting X in calls of ``per_call`` rows."""
    tick = time.perf_counter()
    for start in range(0, len(y), per_call):
        model.fit(X[start:start + per_call], y[start:start + per_call])
    return len(y) / (time.perf_counter() - tick)


def speed(args):
    print(f'## Speed (C = {args.classes}, float32, {torch.get_num_threads()} threads, fastest of {args.repeats})\n')
    print('| d | update | one sample per call | batches of 2,048 | batched vs paper |\n|---|---|---|---|---|')
    generator = torch.Generator().manual_seed(0)
    for d in args.dims:
        X = torch.randn(args.samples, d, generator=generator)
        y = torch.randint(0, args.classes, (args.samples,), generator=generator)
        rates = {}
        for update in ('paper', 'pooled'):
            single = max(rate(StreamingLDA(d, args.classes, device='cpu', covariance_update=update),
                              X[:args.single_samples], y[:args.single_samples], 1) for _ in range(args.repeats))
            batched = max(rate(StreamingLDA(d, args.classes, device='cpu', covariance_update=update), X, y, 2048)
                          for _ in range(args.repeats))
            rates[update] = (single, batched)
        for update, (single, batched) in rates.items():
            print(f'| {d} | {update} | {single:,.0f}/s | {batched:,.0f}/s | '
                  f'{batched / rates["paper"][1]:.2f}x |')
    print(f'\n## Random projection (d = 512 to M, {args.projection_samples:,} samples, C = {args.classes})\n')
    print('| M | project | fit SLDA (batches of 2,048) | first predict after it | total |\n|---|---|---|---|---|')
    X = torch.randn(args.projection_samples, 512, generator=generator)
    y = torch.randint(0, args.classes, (args.projection_samples,), generator=generator)
    for M in args.projections:
        projection = RandomProjection(512, M, seed=0)
        tick = time.perf_counter()
        H = projection(X)
        project = time.perf_counter() - tick
        model = StreamingLDA(M, args.classes, device='cpu')
        tick = time.perf_counter()
        for start in range(0, len(y), 2048):
            model.fit(H[start:start + 2048], y[start:start + 2048])
        fit = time.perf_counter() - tick
        tick = time.perf_counter()
        model.predict(H[:100])
        predict = time.perf_counter() - tick
        print(f'| {M:,} | {project:.2f} s | {fit:.2f} s | {predict:.2f} s | {project + fit + predict:.2f} s |')
        del H, model


def gaussian_stream(seed=0, d=64, classes=20, train=20, test=50):
    """Gaussian classes sharing one random covariance whose scales decay from 1 to 0.05 over the dimensions, means
    drawn N(0, 0.3^2 I): (X_train, y_train, X_test, y_test); streamed class by class (4 base classes, then 4 per
    batch), as class-incremental learning, with 20 training images per class for a 64-d covariance."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.geomspace(1, 0.05, d)
    means = rng.normal(size=(classes, d)) * 0.3

    def draw(per_class):
        y = np.repeat(np.arange(classes), per_class)
        return (means[y] + rng.normal(size=(len(y), d)) @ mixing).astype(np.float32), y
    return (*draw(train), *draw(test))


def accuracy(args):
    print('\n## Final top-1 (%)\n')
    X, y, X_test, y_test = (torch.as_tensor(a) for a in gaussian_stream())
    gaussian = {}
    for name, (options, _) in VARIANTS.items():
        model = StreamingLDA(X.shape[1], 20, device='cpu', **options)
        model.fit_base(X[y < 4], y[y < 4])
        for k in range(4, 20, 4):
            batch = (y >= k) & (y < k + 4)
            model.fit(X[batch], y[batch])
        gaussian[name] = 100 * (model.predict(X_test).argmax(1) == y_test).float().mean().item()
    projected = RandomProjection(X.shape[1], 2000, seed=0)
    model = StreamingLDA(2000, 20, device='cpu')
    model.fit_base(projected(X[y < 4]), y[y < 4])
    for k in range(4, 20, 4):
        batch = (y >= k) & (y < k + 4)
        model.fit(projected(X[batch]), y[batch])
    gaussian['random projection 2,000'] = 100 * (model.predict(projected(X_test)).argmax(1) == y_test).float().mean().item()
    digits = {}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runs = dict(VARIANTS)
        runs['random projection 2,000'] = ({}, ['--random_projection', '2000'])
        for i, (name, (_, flags)) in enumerate(runs.items()):
            save = os.path.join(folder, f'run{i}')
            with contextlib.redirect_stdout(io.StringIO()):
                code = run_experiment(['--feature_cache', os.path.join(folder, 'cache'), '--save_dir', save,
                                       '--no-plot', '--no-progress', '--save_preds', 'none'] + flags)
            with open(os.path.join(save, 'summary.json')) as f:
                digits[name] = json.load(f)['final']['slda']['top1'] if code == 0 else float('nan')
    print('| output layer | digits (resnet18, random init, plastic) | Gaussian stream (d = 64, 20 classes) |\n'
          '|---|---|---|')
    for name in digits:
        print(f'| {name} | {digits[name]:.2f} | {gaussian[name]:.2f} |')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dims', type=int, nargs='+', default=[512, 2048])
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--samples', type=int, default=40000)
    parser.add_argument('--single_samples', type=int, default=3000)
    parser.add_argument('--projections', type=int, nargs='+', default=[2000, 5000, 10000])
    parser.add_argument('--projection_samples', type=int, default=20000)
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--skip_accuracy', action='store_true')
    parser.add_argument('--skip_speed', action='store_true')
    args = parser.parse_args()
    if not args.skip_speed:
        speed(args)
    if not args.skip_accuracy:
        accuracy(args)


if __name__ == '__main__':
    main()
