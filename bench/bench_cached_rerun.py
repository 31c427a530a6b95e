"""Where the time of a rerun from the feature cache goes, at ImageNet's scale.

A rerun with --feature_cache (the second experiment of slda_imagenet.sh, or any rerun with other SLDA
settings) decodes no image, so its time should be SLDA fitting and evaluation. This script builds what
such a rerun sees without needing ImageNet: a folder tree with ImageNet's counts of (empty) image files
and a feature cache filled with synthetic 512-d float16 features for them, keyed exactly as experiment.py
keys it. It then runs experiment.py on it in a fresh process, as a user would, and prints the wall time
split into fitting, evaluation and everything else.

    python bench/bench_cached_rerun.py                          # ImageNet's counts; about 5 minutes here
    python bench/bench_cached_rerun.py --train_per_class 320    # a quarter of the training images
    python bench/bench_cached_rerun.py --device cuda

Building the tree writes 1.33 million empty files (about 30 s here, once per --work_dir); the cache holds
1.3 GB.
"""
import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cli  # noqa: E402
import experiment  # noqa: E402
from feature_cache import FeatureCache, cache_key  # noqa: E402
from features import FeatureReader, build_extractor  # noqa: E402
from slda_model import StreamingLDA  # noqa: E402
from utils import topk_accuracy  # noqa: E402


def make_empty_tree(images_dir, classes, per_split):
    """``images_dir/<split>/nXXXXXXXX/*.JPEG``: empty files, enough for listing and fingerprints."""
    for split, count in per_split.items():
        for k in range(classes):
            folder = os.path.join(images_dir, split, f'n{k:08d}')
            os.makedirs(folder, exist_ok=True)
            for j in range(count):
                os.close(os.open(os.path.join(folder, f'n{k:08d}_{j}.JPEG'), os.O_CREAT | os.O_WRONLY, 0o644))


def cached_splits(argv):
    """What experiment.py builds for ``argv``: its configuration, splits, plan, network and feature cache."""
    config = cli.parse(argv)
    splits = experiment.list_splits(config)
    plan = experiment.make_plan(config, splits, np.arange(splits.num_classes))
    extractor = build_extractor(config, torch.device(config.run.device)).load()
    dtype = getattr(torch, config.cache.cache_dtype)
    cache = FeatureCache(config.cache.feature_cache, cache_key(extractor.identity, splits, dtype), dtype)
    return config, splits, plan, extractor, cache


def fill_cache(argv, dim, seed=0):
    """Write every class of both splits into the cache experiment.py would read for ``argv``.

    Features are Gaussian clusters: class means N(0, 1), within-class noise N(0, 0.5^2) per dimension.
    """
    config, splits, _, extractor, cache = cached_splits(argv)
    if extractor.dim != dim:
        raise SystemExit(f'{config.network.arch} {config.network.extract_layer} gives {extractor.dim}-d features, '
                         f'not {dim}')
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(splits.num_classes, dim, generator=generator)
    for split, split_name in ((splits.train, 'train'), (splits.test, splits.test_name)):
        for label in range(splits.num_classes):
            indices = torch.from_numpy(np.flatnonzero(split.labels == label))
            features = means[label] + 0.5 * torch.randn(len(indices), dim, generator=generator)
            cache.write(split, split_name, label, features, indices, torch.zeros(0, dtype=torch.int64))


def slda_alone(argv):
    """Seconds the rerun's SLDA work takes by itself: the same features and calls, all already in memory."""
    config, splits, plan, extractor, cache = cached_splits(argv)
    train = FeatureReader(splits.train, 'train', cache=cache)
    test = FeatureReader(splits.test, splits.test_name, cache=cache, keep=True)
    batches = [(batch.base_init, *train.take(batch.train_indices), *test.take(batch.test_indices)) for batch in plan]
    device = torch.device(config.run.device)
    model = StreamingLDA(extractor.dim, splits.num_classes, device=device)
    tick = time.perf_counter()
    for base_init, X, y, X_test, y_test in batches:
        X, y = X.to(device), y.to(device)
        if base_init:
            model.fit_base(X, y)
        else:
            model.fit(X, y)
        topk_accuracy(model.decision_function(X_test), y_test)
    return time.perf_counter() - tick


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--classes', type=int, default=1000)
    parser.add_argument('--train_per_class', type=int, default=1281, help='ImageNet: 1,281,167 / 1000')
    parser.add_argument('--val_per_class', type=int, default=50)
    parser.add_argument('--increment', type=int, default=100, help='classes per increment and in the base')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--work_dir', default=None,
                        help='keep the tree and cache here and reuse them on later runs (default: a temporary '
                             'folder, removed afterwards)')
    parser.add_argument('--runs', nargs='+', default=['every', 'none'], choices=['every', 'final', 'none'],
                        help='--save_preds of each timed rerun (default: every none)')
    parser.add_argument('--cache_check', choices=['sizes', 'listing'], default='sizes',
                        help='experiment.py\'s --cache_check (default: %(default)s)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='runs of each kind; the fastest is reported, the machine being noisy (default: 3)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or tmp
        images_dir, cache = os.path.join(work, 'images'), os.path.join(work, 'cache')
        argv = ['--dataset', 'imagefolder', '--images_dir', images_dir, '--feature_cache', cache,
                '--class_increment', str(args.increment), '--device', args.device, '--no-progress',
                '--cache_check', args.cache_check]
        tree_marker = os.path.join(work, f'tree_{args.classes}_{args.train_per_class}_{args.val_per_class}')
        if not os.path.exists(tree_marker):
            subprocess.run(['rm', '-rf', images_dir, cache], check=True)
            tick = time.perf_counter()
            make_empty_tree(images_dir, args.classes, {'train': args.train_per_class, 'val': args.val_per_class})
            print(f'tree of {args.classes} x ({args.train_per_class} + {args.val_per_class}) empty files: '
                  f'{time.perf_counter() - tick:.1f} s', flush=True)
            open(tree_marker, 'w').close()
        if not os.path.isdir(cache):
            tick = time.perf_counter()
            fill_cache(argv, dim=512)
            print(f'cache filled with synthetic features: {time.perf_counter() - tick:.1f} s', flush=True)
        # Interleaved, so that the machine's speed drifting over minutes touches every kind of run alike.
        startup, alone, runs = [], [], {save_preds: [] for save_preds in args.runs}
        for _ in range(args.repeats):
            tick = time.perf_counter()
            subprocess.run([sys.executable, '-c', 'import experiment'], cwd=ROOT, check=True)
            startup.append(time.perf_counter() - tick)
            with multiprocessing.get_context('spawn').Pool(1) as pool:     # a fresh process, like the reruns
                alone.append(pool.apply(slda_alone, (argv,)))
            for save_preds in args.runs:
                save_dir = os.path.join(work, f'rerun_{save_preds}')
                subprocess.run(['rm', '-rf', save_dir], check=True)
                tick = time.perf_counter()
                subprocess.run([sys.executable, os.path.join(ROOT, 'experiment.py'), *argv, '--save_dir', save_dir,
                                '--save_preds', save_preds], check=True, stdout=subprocess.DEVNULL)
                with open(os.path.join(save_dir, 'summary.json')) as f:
                    runs[save_preds].append((time.perf_counter() - tick, json.load(f)))
        startup, alone = min(startup), min(alone)
        print(f'start-up (Python, importing experiment.py and torch): {startup:.2f} s; SLDA alone (fit and '
              f'evaluate every increment, features already in memory): {alone:.2f} s; fastest of {args.repeats} '
              f'runs each')
        print(f'{"--save_preds":>12s} {"wall s":>7s} {"fit s":>6s} {"eval s":>6s} {"prepare s":>9s} {"load s":>6s} '
              f'{"not fit/eval":>12s} {"after start-up":>14s} {"vs SLDA alone":>13s}')
        for save_preds in args.runs:
            wall, summary = min(runs[save_preds], key=lambda run: run[0])
            if summary['images_extracted_this_process']:
                raise SystemExit('the rerun decoded images: the cache was not used')
            seconds = summary['seconds']
            slda = seconds['fit'] + seconds['evaluate']
            print(f'{save_preds:>12s} {wall:7.2f} {seconds["fit"]:6.2f} {seconds["evaluate"]:6.2f} '
                  f'{seconds["prepare"]:9.2f} {seconds["extract"]:6.2f} {1 - slda / wall:12.1%} '
                  f'{1 - slda / (wall - startup):14.1%} {1 - alone / (wall - startup):13.1%}', flush=True)
    print('wall: the whole command; fit, eval: as the run measured them (slowed by the file thread working '
          'meanwhile); prepare: listing files, building the network; load: time the loop waited for cached '
          'features; not fit/eval: 1 - (fit + eval) / wall, and the same after start-up; vs SLDA alone: '
          '1 - SLDA alone / (wall - start-up), which the noise between processes blurs.')


if __name__ == '__main__':
    main()
