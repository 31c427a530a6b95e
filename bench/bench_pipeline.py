"""End-to-end speed of a streaming experiment from JPEG files: the original's way against ours.

Builds a synthetic ImageFolder of JPEG files the size of ImageNet's (500x375) in a temporary folder, then
runs the same class-incremental protocol three ways in one process:

  (a) the original's way: float32 network, each batch extracted then one SLDA update per sample with a
      device round trip, test images extracted again at every increment;
  (b) ours (experiment.py): bfloat16 autocast where supported, batched exact fit, each test image
      extracted once;
  (c) ours again with --feature_cache: a first run fills the cache, a second run (what a rerun, or the
      other covariance of slda_imagenet.sh, costs) decodes no image;
  (d) with --decode_on_device, ours decoding JPEG files in batches on the device (nvJPEG on CUDA).

Prints images/s of extraction, samples/s of streaming, seconds per stage and the ratios.

    python bench/bench_pipeline.py                    # CPU, a few minutes on 2 cores
    python bench/bench_pipeline.py --device cuda --classes 20 --train_per_class 250 --workers 16 --decode_on_device
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import experiment  # noqa: E402
import protocol  # noqa: E402
from bench_slda import original_update  # noqa: E402
from features import Extraction, FeatureExtractor, FeatureReader  # noqa: E402
from slda_model import StreamingLDA  # noqa: E402


def make_image_folder(root, classes, train_per_class, val_per_class, seed=0):
    """JPEG files of 500x375 smooth random colour fields, synset-like class names."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for k in range(classes):
            folder = os.path.join(root, split, f'n{k:08d}')
            os.makedirs(folder)
            for j in range(count):
                coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                image = Image.fromarray(coarse).resize((500, 375), Image.BILINEAR)
                noise = rng.integers(-20, 20, size=(375, 500, 3))
                pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(os.path.join(folder, f'n{k:08d}_{j:05d}.JPEG'), quality=90)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def original_way(args, images_dir, device):
    """The original pipeline's costs: float32 network, per-sample updates, tests re-extracted."""
    preprocessing = data.Preprocessing().at_size(args.image_size)
    splits = data.image_folder_splits('imagefolder', images_dir, preprocessing)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        extractor = FeatureExtractor(device=device, amp=False, preprocessing=preprocessing).load()
    extraction = Extraction(extractor, args.batch_size, args.workers, pin_memory=device.type == 'cuda',
                            progress=False)
    train, test = FeatureReader(splits.train, 'train', extraction), FeatureReader(splits.test, 'val', extraction)
    model = StreamingLDA(extractor.dim, splits.num_classes, device=device)
    seconds = {'extract': 0.0, 'fit': 0.0, 'evaluate': 0.0}
    plan = protocol.class_incremental(splits.train.labels, splits.test.labels, np.arange(splits.num_classes),
                                      splits.num_classes, args.increment, args.increment)
    streamed = 0
    for batch in plan:
        tick = time.perf_counter()
        X, y = train.take(batch.train_indices)
        seconds['extract'] += time.perf_counter() - tick
        tick = time.perf_counter()
        if batch.base_init:
            model.fit_base(X.to(device), y.to(device))
        else:
            t = int(model.num_updates)
            for j, (x, label) in enumerate(zip(X, y)):   # one call per sample from the CPU, as the original
                original_update(model, x, label, t + j)
            streamed += len(y)
        synchronize(device)
        seconds['fit'] += time.perf_counter() - tick
        tick = time.perf_counter()
        X_test, _ = test.take(batch.test_indices)        # not kept: extracted again every increment
        seconds['extract'] += time.perf_counter() - tick
        tick = time.perf_counter()
        model.predict(X_test, return_probas=True)
        seconds['evaluate'] += time.perf_counter() - tick
    images = train.images_extracted + test.images_extracted
    return seconds, images, streamed


def ours(args, images_dir, device, save_dir, cache=None, decode_on_device=False):
    argv = ['--dataset', 'imagefolder', '--images_dir', images_dir, '--class_increment', str(args.increment),
            '--image_size', str(args.image_size), '--batch_size', str(args.batch_size), '--device', str(device),
            '--num_workers', str(args.workers), '--save_dir', save_dir, '--no-progress']
    if cache:
        argv += ['--feature_cache', cache]
    if decode_on_device:
        argv += ['--decode_on_device']
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        code = experiment.main(argv)
    if code != 0:
        raise SystemExit(f'experiment.py failed with exit code {code}')
    with open(os.path.join(save_dir, 'summary.json')) as f:
        summary = json.load(f)
    streamed = sum(row['train_images'] for row in summary['increments'][1:])
    return summary['seconds'], summary['images_extracted_this_process'], streamed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--classes', type=int, default=6)
    parser.add_argument('--train_per_class', type=int, default=40)
    parser.add_argument('--val_per_class', type=int, default=10)
    parser.add_argument('--increment', type=int, default=2, help='classes per increment (and in the base)')
    parser.add_argument('--image_size', type=int, default=224)
    parser.add_argument('--batch_size', type=int, default=64)
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--decode_on_device', action='store_true',
                        help='also time ours with JPEG decoding on the device (nvJPEG on CUDA)')
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = os.path.join(tmp, 'images')
        tick = time.perf_counter()
        make_image_folder(images_dir, args.classes, args.train_per_class, args.val_per_class)
        print(f'{args.classes} classes x ({args.train_per_class} train + {args.val_per_class} val) JPEG files '
              f'of 500x375 written in {time.perf_counter() - tick:.1f} s; device={device}, '
              f'workers={args.workers}, threads={torch.get_num_threads()}, batch={args.batch_size}')
        cache = os.path.join(tmp, 'cache')
        runs = [('(a) original way', lambda: original_way(args, images_dir, device)),
                ('(b) ours, no cache', lambda: ours(args, images_dir, device, os.path.join(tmp, 'b'))),
                ('(c) ours, filling the cache', lambda: ours(args, images_dir, device, os.path.join(tmp, 'c1'), cache)),
                ('(c) ours, rerun from the cache',
                 lambda: ours(args, images_dir, device, os.path.join(tmp, 'c2'), cache))]
        if args.decode_on_device:
            runs.append(('(d) ours, decoding on the device',
                         lambda: ours(args, images_dir, device, os.path.join(tmp, 'd'), decode_on_device=True)))
        rows = {}
        for name, run in runs:
            tick = time.perf_counter()
            seconds, images, streamed = run()
            rows[name] = (time.perf_counter() - tick, seconds, images, streamed)

    baseline = rows['(a) original way'][0]
    print(f'{"":32s} {"total s":>8s} {"extract s":>9s} {"fit s":>7s} {"eval s":>7s} {"images":>7s} '
          f'{"img/s":>7s} {"stream/s":>10s} {"speed-up":>8s} {"non-SLDA share":>14s}')
    for name, (total, seconds, images, streamed) in rows.items():
        image_rate = f'{images / seconds["extract"]:7.1f}' if images else '      -'
        stream_rate = streamed / seconds['fit'] if seconds['fit'] > 0 else float('inf')
        other = 1 - (seconds['fit'] + seconds['evaluate']) / total
        print(f'{name:32s} {total:8.2f} {seconds["extract"]:9.2f} {seconds["fit"]:7.3f} '
              f'{seconds["evaluate"]:7.3f} {images:7d} {image_rate} {stream_rate:10,.0f} '
              f'{baseline / total:7.1f}x {other:13.0%}')
    print('img/s: images decoded and passed through the network per second of extraction; stream/s: samples per '
          'second of SLDA updates after the base initialisation; non-SLDA share: fraction of the wall time not '
          'spent fitting or evaluating SLDA (start-up, loading, decoding, writing results).')


if __name__ == '__main__':
    main()
