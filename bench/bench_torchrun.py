"""Feature extraction with one process and with N under torchrun, side by side.

Builds the synthetic JPEG folder of bench_pipeline.py, then runs the same experiment.py command twice from an
empty feature cache: as one process, and under `torchrun --standalone --nproc_per_node N` (each process on
cuda:LOCAL_RANK when there are GPUs, else on the CPU). Prints each run's wall time, images per second over
the whole command, and the images each process extracted. On a 2-core CPU expect no gain (the processes
share the cores); the point there is that the path runs. With N GPUs it shows the scaling.

    python bench/bench_torchrun.py                          # CPU, N = 2
    python bench/bench_torchrun.py --processes 8 --classes 64 --train_per_class 200 --workers 4
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pipeline import make_image_folder  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_run(command, save_dir):
    tick = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tick
    with open(os.path.join(save_dir, 'summary.json')) as f:
        return wall, json.load(f)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--processes', type=int, default=2)
    parser.add_argument('--classes', type=int, default=8)
    parser.add_argument('--train_per_class', type=int, default=40)
    parser.add_argument('--val_per_class', type=int, default=10)
    parser.add_argument('--workers', type=int, default=1, help='decoding workers per process')
    parser.add_argument('--batch_size', type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        images_dir = os.path.join(tmp, 'images')
        make_image_folder(images_dir, args.classes, args.train_per_class, args.val_per_class)
        total = args.classes * (args.train_per_class + args.val_per_class)
        print(f'{total} JPEG files of 500x375 in {args.classes} classes')
        experiment = os.path.join(ROOT, 'experiment.py')
        rows = []
        for processes in (1, args.processes):
            save_dir = os.path.join(tmp, f'run_{processes}')
            argv = ['--dataset', 'imagefolder', '--images_dir', images_dir, '--class_increment', '2',
                    '--num_workers', str(args.workers), '--batch_size', str(args.batch_size), '--feature_cache',
                    os.path.join(tmp, f'cache_{processes}'), '--save_dir', save_dir, '--no-progress', '--no-plot']
            launcher = [sys.executable] if processes == 1 else \
                [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(processes)]
            wall, summary = timed_run(launcher + [experiment] + argv, save_dir)
            rows.append((processes, wall, summary['images_extracted_per_process']))
    print(f'{"processes":>9s} {"wall s":>7s} {"images/s":>9s}  images per process')
    for processes, wall, per_process in rows:
        print(f'{processes:9d} {wall:7.1f} {total / wall:9.1f}  {per_process}')
    print(f'speed-up with {args.processes} processes: {rows[0][1] / rows[1][1]:.2f}x (wall time of the whole command, '
          f'start-up included)')


if __name__ == '__main__':
    main()
