"""Extraction from JPEG files against the limit that decoding and the network allow together.

Builds a synthetic ImageFolder of JPEG files the size of ImageNet's (500x375, bench_pipeline.make_image_folder)
in a temporary folder and measures, in one process:

  (a) decoding only, on one thread: the project's own ImageList (PIL decode, resize, centre crop, uint8);
  (b) the network only, on pre-decoded uint8 batches with torch's threads: as FeatureExtractor runs it
      (channels-last, bfloat16 autocast where the CPU has native bfloat16), and in NCHW for comparison;
  (c) the whole extraction as experiment.py runs it (Extraction through a FeatureReader, one call per
      increment of ``--increment`` classes), for each scheduling of ``--schedules``: decoding processes
      (``--num_workers``) and torch threads in the main process.

A CPU-second bound follows from (a) and (b): an image costs 1/decode_rate core-seconds to decode and
cores/network_rate core-seconds in the network, so with ``cores`` cores the limit is
cores / (1/decode_rate + cores/network_rate) images/s. Each scheduling is printed as a percentage of it, with
the CPU time it used per image (its decoding processes' included) and its features' largest difference from
(b)'s on the same images (in the same batches where an increment holds a multiple of ``--batch_size`` images). Every measurement runs once per round and the rounds are repeated, so that load
from other jobs falls on all alike; rates are the fastest of ``--repeats`` rounds after a first one, which
also starts the decoding processes and is printed apart.

    python bench/bench_extraction.py                          # about 4 minutes on 2 shared cores
    python bench/bench_extraction.py --increment 0 --schedules 0x2 2x2 --batch_size 256 --per_class 128
"""
import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from bench_pipeline import make_image_folder  # noqa: E402
from config import usable_cpus  # noqa: E402
from features import Extraction, FeatureExtractor, FeatureReader, cpu_supports_bfloat16  # noqa: E402


def cpu_seconds():
    """CPU seconds (user + system) used so far by this process and its living children, the decoding processes;
    on a machine without /proc, by this process only."""
    total = time.process_time()
    if not os.path.isdir('/proc'):
        return total
    for entry in os.listdir('/proc'):
        try:
            with open(f'/proc/{entry}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()     # after the command name, which may hold spaces
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():        # the parent's pid; then utime and stime in clock ticks
            total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    return total


def decode_all(split):
    """Every image of ``split`` decoded in this thread: uint8 (n, 3, S, S)."""
    return torch.stack([split[i][0] for i in range(len(split))])


def network_features(extractor, images, batch_size):
    """Features (n, d) of uint8 ``images`` (n, 3, S, S) in batches, as FeatureExtractor computes them."""
    return torch.cat([extractor(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def nchw_features(extractor, images, batch_size):
    """The same network and arithmetic with the weights and batches in NCHW (contiguous) memory format."""
    network = extractor.network.to(memory_format=torch.contiguous_format)
    try:
        rows = []
        for i in range(0, len(images), batch_size):
            batch = data.normalize(images[i:i + batch_size], extractor.preprocessing.mean, extractor.preprocessing.std)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=extractor.amp):
                rows.append(network(batch).float())
        return torch.cat(rows)
    finally:
        network.to(memory_format=torch.channels_last)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--classes', type=int, default=4)
    parser.add_argument('--per_class', type=int, default=64, help='training images per class (the ones timed)')
    parser.add_argument('--batch_size', type=int, default=64, help='images per network batch (experiment.py: 256)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads(),
                        help='torch threads for the network-only rate, and the cores of the limit')
    parser.add_argument('--schedules', nargs='+', default=['0x2', '1x2', '2x2', '2x1', '1x1'], metavar='WxT',
                        help='pipelines to time: W decoding processes (--num_workers), T torch threads in the main '
                             'process')
    parser.add_argument('--increment', type=int, default=2,
                        help='classes per call of the FeatureReader, as experiment.py takes one increment at a time '
                             '(each call fills and drains the pipeline once); 0: all classes in one call')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--amp', choices=['auto', 'on', 'off'], default='auto',
                        help='bfloat16 autocast: auto = where the CPU has native bfloat16, as experiment.py')
    args = parser.parse_args()
    schedules = [tuple(int(part) for part in text.split('x')) for text in args.schedules]
    amp = args.amp == 'on' or (args.amp == 'auto' and cpu_supports_bfloat16())
    with tempfile.TemporaryDirectory() as tmp:
        make_image_folder(tmp, args.classes, args.per_class, 1)
        split = data.image_folder_splits('imagefolder', tmp, data.Preprocessing()).train
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')         # random initialisation: speed does not depend on weights
            extractor = FeatureExtractor(amp=amp).load()
        n = len(split)
        print(f'{n} JPEG files of 500x375 -> 224x224; batches of {args.batch_size}; increments of '
              f'{args.increment or args.classes} classes; {"bfloat16 autocast" if amp else "float32"}; '
              f'{usable_cpus()} usable CPUs; load average {os.getloadavg()[0]:.2f}; fastest of {args.repeats}')

        # Every measurement once per round, rounds repeated: load from other jobs then falls on all of them alike
        torch.set_num_threads(1)
        images = decode_all(split)
        pipelines = {}
        for workers, threads in schedules:
            extraction = Extraction(extractor, args.batch_size, workers, progress=False)
            pipelines[workers, threads] = FeatureReader(split, 'train', extraction)
        step = args.increment or args.classes
        increments = [np.flatnonzero((split.labels >= k) & (split.labels < k + step))
                      for k in range(0, args.classes, step)]
        best = {}           # name: [wall seconds of each round]
        cpu = {}            # name: [CPU seconds of each round]
        features = {}

        def timed(name, threads, run):
            torch.set_num_threads(threads)
            cpu_tick, tick = cpu_seconds(), time.perf_counter()
            features[name] = run()
            best.setdefault(name, []).append(time.perf_counter() - tick)
            cpu.setdefault(name, []).append(cpu_seconds() - cpu_tick)

        for _ in range(args.repeats + 1):       # the first round also starts the decoding processes
            timed('decode', 1, lambda: decode_all(split))
            timed('network', args.threads, lambda: network_features(extractor, images, args.batch_size))
            timed('nchw', args.threads, lambda: nchw_features(extractor, images, args.batch_size))
            for (workers, threads), reader in pipelines.items():
                timed((workers, threads), threads,
                      lambda: torch.cat([reader.take(indices)[0] for indices in increments]))
        rate = {name: n / min(seconds[1:]) for name, seconds in best.items()}
        cpu_ms = {name: 1000 * min(seconds[1:]) / n for name, seconds in cpu.items()}     # per image
        reference = features['network']
        decode_rate, network_rate, nchw_rate = rate['decode'], rate['network'], rate['nchw']
        limit = args.threads / (1 / decode_rate + args.threads / network_rate)
        print(f'(a) decode only, 1 thread:                  {decode_rate:7.1f} images/s, '
              f'{cpu_ms["decode"]:5.1f} CPU ms/image')
        print(f'(b) network only, {args.threads} threads, channels-last: {network_rate:7.1f} images/s, '
              f'{cpu_ms["network"]:5.1f} CPU ms/image')
        print(f'    network only, {args.threads} threads, NCHW:          {nchw_rate:7.1f} images/s '
              f'({nchw_rate / network_rate:.2f}x; features differ by at most '
              f'{(features["nchw"] - reference).abs().max():.2e})')
        print(f'    limit with {args.threads} cores: {args.threads} / (1/{decode_rate:.0f} + {args.threads}/'
              f'{network_rate:.0f}) = {limit:.1f} images/s\n')
        work = cpu_ms['decode'] + cpu_ms['network']
        print(f'(c) {"workers":>7s} {"threads":>7s} {"images/s":>9s} {"% of limit":>10s} {"first run":>9s} '
              f'{"CPU ms/image":>12s} {"/ (a)+(b)":>9s} {"max |diff|":>10s}')
        for key in pipelines:
            workers, threads = key
            difference = (features[key] - reference).abs().max()
            print(f'    {workers:7d} {threads:7d} {rate[key]:9.1f} {rate[key] / limit:10.0%} '
                  f'{n / best[key][0]:9.1f} {cpu_ms[key]:12.1f} {cpu_ms[key] / work:9.2f} {difference:10.2e}')
        print('first run: the first round, which also starts decoding processes; CPU ms/image: this process and '
              'its decoding processes, fewest of the rounds; / (a)+(b): that against decoding and the network '
              'alone, where spinning and waiting threads show')


if __name__ == '__main__':
    main()
