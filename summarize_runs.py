"""A Markdown table of finished runs: mean and standard deviation over seeds of SLDA's final (last) accuracies, of
Omega_all, of its average incremental accuracy and of its average forgetting (metrics.py), one row per group of
runs that share every setting that changes results but their seeds.

    python summarize_runs.py streaming_experiments/core50/core50_* --output tables/core50.md

Each DIR is a run folder written by experiment.py, of any release (runs.load_run; accuracies given as fractions
by earlier releases are read as percent). A folder that is not a run (a mistyped name, a feature cache brought by
a shell glob) is an error naming it (exit 2); runs that have not finished are listed and left out. Columns:
dataset, ordering, covariance, the number of runs, the means ± standard deviations, the seeds of the group's runs
(in the order of the DIRs) and the settings that tell the rows apart (those whose values differ between rows; a
seed as seeded or None, its values being in the seeds column).
Accuracies are in percent, forgetting in percentage points (blank for runs of releases that did not record it);
the standard deviation is the sample one (n - 1), blank for a single run. A folder given more than once (with a
trailing slash, through a link) counts once, with a note; runs of the same settings and seeds in different folders
(copies) are averaged, with a warning naming them. --output's folders are made when missing.
"""
import argparse
import json
import os
import statistics
import sys

from runs import load_run, write_output
from utils import save_text

MEASURES = ['final top-1', 'final top-5', 'Omega_all top-1', 'Omega_all top-5', 'average incremental top-1',
            'average incremental top-5', 'forgetting']


def measures(run):
    """{measure: value} of a finished run (runs.Run): SLDA's final and average incremental accuracies (percent),
    Omega_all if given and average forgetting (percentage points) if recorded."""
    values = {'final top-1': run.final_top1['slda'], 'final top-5': run.final_top5['slda'],
              'average incremental top-1': run.average_incremental['slda']['top1'],
              'average incremental top-5': run.average_incremental['slda']['top5']}
    if run.omega_all:
        values.update({'Omega_all top-1': run.omega_all['top1'], 'Omega_all top-5': run.omega_all['top5']})
    if 'slda' in run.forgetting:
        values['forgetting'] = run.forgetting['slda']
    return values


def group(runs):
    """{settings key: [runs]}: runs grouped by every results setting but their seeds, in the order given."""
    groups = {}
    for run in runs:
        settings = {name: value for name, value in run.results_settings.items() if name not in run.seeds}
        groups.setdefault(json.dumps(settings, sort_keys=True), []).append(run)
    return groups


def distinct_folders(folders):
    """``folders`` with each folder kept once, at its first mention (the same folder spelt otherwise, with a
    trailing slash or through a link, included: averaging it with itself would fake agreement between seeds), and
    the note for stderr naming the repeated ones ('' when none is)."""
    first = {}
    mentions = {}
    for folder in folders:
        key = os.path.realpath(folder)
        first.setdefault(key, folder)
        mentions[key] = mentions.get(key, 0) + 1
    repeated = [f'{first[key]} ({count} times)' for key, count in mentions.items() if count > 1]
    note = f'note: counted once each, given more than once: {", ".join(repeated)}' if repeated else ''
    return list(first.values()), note


def copies(runs):
    """A warning line per set of runs in different folders with the same settings, seeds included: copies of one
    run, not independent ones, yet averaged as such."""
    same = {}
    for run in runs:
        same.setdefault(json.dumps(run.results_settings, sort_keys=True), []).append(run.folder)
    return [f'warning: {", ".join(folders)} hold runs of the same settings and seeds (copies of one run?); they '
            f'are averaged as independent runs' for folders in same.values() if len(folders) > 1]


def mean_std(values, digits):
    if not values:
        return ''
    text = f'{statistics.mean(values):.{digits}f}'
    return text + (f' ± {statistics.stdev(values):.{digits}f}' if len(values) > 1 else '')


def seeds(runs):
    """The seeds cell: each seed's value in every run, "name: v1, v2, ..." joined by "; "."""
    names = sorted({name for run in runs for name in run.seeds})
    return '; '.join(f'{name}: ' + ', '.join(str(run.seeds.get(name)) for run in runs) for name in names)


def distinguishing(groups):
    """The names of the results settings whose values differ between ``groups`` (runs.Run lists): a seed only
    where some groups set it and others do not (a seeded order against the sorted one), as a row averages over
    the seeds it lists."""
    settings = [runs[0].results_settings for runs in groups]
    seeds = {name for runs in groups for run in runs for name in run.seeds}

    def differs(name):
        values = {one.get(name) is None if name in seeds else json.dumps(one.get(name)) for one in settings}
        return len(values) > 1
    return sorted(name for name in {name for one in settings for name in one} if differs(name))


def table(groups):
    """Markdown table of ``groups`` (lists of finished runs.Run), rows sorted by dataset, ordering, covariance."""
    lines = ['| dataset | ordering | covariance | runs | ' + ' | '.join(MEASURES) + ' | seeds | settings |',
             '|---|---|---|---|' + '---|' * (len(MEASURES) + 2)]
    differing = distinguishing(groups)
    seed_names = {name for runs in groups for run in runs for name in run.seeds}
    for runs in sorted(groups, key=lambda runs: (runs[0].dataset, runs[0].ordering, runs[0].covariance)):
        values = [measures(run) for run in runs]
        cells = [mean_std([v[m] for v in values if m in v], 3 if m.startswith('Omega') else 2) for m in MEASURES]
        settings = runs[0].results_settings

        def shown(name):
            # a seed tells rows apart only by being set or not: the row's runs have their own (the seeds column)
            if name in seed_names:
                return 'None' if settings[name] is None else 'seeded'
            return settings[name]
        described = ' '.join(f'{name}={shown(name)}' for name in differing if name in settings)
        lines.append(f'| {runs[0].dataset} | {runs[0].ordering} | {runs[0].covariance} | {len(runs)} | ' +
                     ' | '.join(cells) + f' | {seeds(runs)} | {described} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', metavar='DIR', help='run folders of experiment.py')
    parser.add_argument('--output', metavar='FILE', help='also write the table to this Markdown file')
    args = parser.parse_args(argv)
    folders, repeated = distinct_folders(args.folders)
    try:
        runs = [load_run(folder) for folder in folders]
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if repeated:
        print(repeated, file=sys.stderr)
    finished = [run for run in runs if run.finished]
    if not finished:
        print(f'error: no finished run among {len(runs)} folder(s)', file=sys.stderr)
        return 2
    for warning in copies(finished):
        print(warning, file=sys.stderr)
    text = table(list(group(finished).values()))
    print(text, end='')
    unfinished = [run.folder for run in runs if not run.finished]
    if unfinished:
        print(f'left out, not finished: {", ".join(unfinished)}', file=sys.stderr)
    if args.output:
        try:
            write_output(args.output, save_text, [text])
        except ValueError as e:
            print(f'error: --output: {e}', file=sys.stderr)
            return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
