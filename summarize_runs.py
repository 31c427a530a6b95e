"""A Markdown table of finished runs: mean and standard deviation over seeds of the final accuracies and of
Omega_all, one row per dataset, ordering and covariance.

    python summarize_runs.py streaming_experiments/core50/core50_* --output table.md

Each DIR is a run folder written by experiment.py (config.json and a finished summary.json); folders whose
run has not finished are listed and left out. Accuracies are in percent; the standard deviation is the
sample one (n - 1), blank for a single run.
"""
import argparse
import os
import statistics
import sys

from plot_results import load_run
from utils import save_text


def read_run(folder):
    """(row key, {measure: value}) of a finished run folder, or None when its run has not finished."""
    try:
        run = load_run(folder)
    except ValueError:
        return None
    config, summary = run['config'], run['summary']
    if not summary.get('finished'):
        return None
    key = (config['arguments']['dataset'], config.get('ordering', 'class_incremental'), config['covariance'])
    values = {'final top-1': summary['final_top1'], 'final top-5': summary['final_top5']}
    if summary.get('omega_all'):
        omega = summary['omega_all']
        values.update({'Omega_all top-1': omega['top1'], 'Omega_all top-5': omega['top5']})
    return key, values


def mean_std(values, digits):
    if not values:
        return ''
    text = f'{statistics.mean(values):.{digits}f}'
    return text + (f' ± {statistics.stdev(values):.{digits}f}' if len(values) > 1 else '')


def table(runs):
    """Markdown table of {key: [values of each run]}, keys (dataset, ordering, covariance) in sorted order."""
    measures = ['final top-1', 'final top-5', 'Omega_all top-1', 'Omega_all top-5']
    lines = ['| dataset | ordering | covariance | runs | ' + ' | '.join(measures) + ' |',
             '|---|---|---|---|' + '---|' * len(measures)]
    for key in sorted(runs):
        cells = [mean_std([run[m] for run in runs[key] if m in run], 3 if m.startswith('Omega') else 2)
                 for m in measures]
        lines.append(f'| {" | ".join(key)} | {len(runs[key])} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', metavar='DIR', help='run folders of experiment.py')
    parser.add_argument('--output', metavar='FILE', help='also write the table to this Markdown file')
    args = parser.parse_args(argv)
    runs, unfinished = {}, []
    for folder in args.folders:
        if not os.path.isfile(os.path.join(folder, 'config.json')):
            continue          # not a run folder (a feature cache, say), as a shell glob may bring
        read = read_run(folder)
        if read is None:
            unfinished.append(folder)
            continue
        runs.setdefault(read[0], []).append(read[1])
    if not runs:
        print(f'error: no finished run among {len(args.folders)} folder(s)', file=sys.stderr)
        return 2
    text = table(runs)
    print(text, end='')
    if unfinished:
        print(f'left out, not finished: {", ".join(unfinished)}', file=sys.stderr)
    if args.output:
        save_text(args.output, [text])
    return 0


if __name__ == '__main__':
    sys.exit(main())
