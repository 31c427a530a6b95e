"""Which torch thread setting serves an SLDA run best on a machine that other processes share.

Runs the same SLDA workloads in a fresh process per setting: torch's default (one thread per core, OpenMP
threads that spin while they wait), one thread, the default thread count with ``OMP_WAIT_POLICY=PASSIVE``
(waiting threads sleep), and with ``GOMP_SPINCOUNT=10000`` (a short spin, then sleep; GNU OpenMP, which torch's
Linux wheels use). Each is measured on its own and beside a competing process this script starts (one core
kept busy by a Python loop, as another job on the machine would), and the rates are printed side by side,
fastest of ``--repeats`` runs each.

    python bench/bench_threads.py               # about a minute on 2 CPU cores
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {'default (spin)': ({}, None), 'one thread': ({}, 1), 'passive wait': ({'OMP_WAIT_POLICY': 'PASSIVE'}, None),
            'short spin': ({'GOMP_SPINCOUNT': '10000'}, None)}


def workloads(repeats):
    """{workload: (rate, unit)} measured in this process, fastest of ``repeats`` runs."""
    import torch
    sys.path.insert(0, ROOT)
    from slda_model import StreamingLDA
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(20_000, 512, generator=generator)
    y = torch.randint(0, 1000, (20_000,), generator=generator)
    small_X, small_y = torch.randn(200, 12, generator=generator), torch.arange(200) % 6

    def best(run):
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            run()
            times.append(time.perf_counter() - tick)
        return min(times)

    def model(plastic=True, d=512, classes=1000):
        return StreamingLDA(d, classes, streaming_update_sigma=plastic, device='cpu')

    def one_per_call(rows):
        stream = model(False)
        for i in range(rows):
            stream.fit(X[i], int(y[i]))

    fitted = model().fit(X, y)
    return {
        'batched fit, plastic (d=512, C=1000)': (len(y) / best(lambda: model().fit(X, y)), 'samples/s'),
        'batched fit, fixed': (len(y) / best(lambda: model(False).fit(X, y)), 'samples/s'),
        'one sample per call, fixed': (5000 / best(lambda: one_per_call(5000)), 'samples/s'),
        'predict 10,000 x 1,000 classes': (10_000 / best(lambda: fitted.predict(X[:10_000])), 'samples/s'),
        'a tiny model: fit and predict (d=12, C=6)': (
            1 / best(lambda: model(True, 12, 6).fit(small_X, small_y).predict(small_X)), 'per s'),
    }


def measure(setting, repeats):
    environment, threads = SETTINGS[setting]
    code = (f'import sys, json, torch; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); '
            + (f'torch.set_num_threads({threads}); ' if threads else '')
            + f'from bench_threads import workloads; print(json.dumps(workloads({repeats})))')
    output = subprocess.run([sys.executable, '-c', code], env={**os.environ, **environment}, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3)
    args = parser.parse_args()
    results = {}
    for load in ('alone', 'beside a busy process'):
        busy = subprocess.Popen([sys.executable, '-c', 'while True: pass']) if load != 'alone' else None
        try:
            for setting in SETTINGS:
                results[load, setting] = measure(setting, args.repeats)
        finally:
            if busy:
                busy.kill()
                busy.wait()
    print(f'{os.cpu_count()} CPUs; rates, fastest of {args.repeats}')
    for load in ('alone', 'beside a busy process'):
        print(f'\n{load}:')
        names = list(results[load, 'default (spin)'])
        print(f'{"workload":44s}' + ''.join(f'{setting:>16s}' for setting in SETTINGS) + '  unit')
        for name in names:
            print(f'{name:44s}' + ''.join(f'{results[load, setting][name][0]:16,.0f}' for setting in SETTINGS)
                  + f'  {results[load, "default (spin)"][name][1]}')

if __name__ == '__main__':
    main()
