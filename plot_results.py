"""Learning curves and a comparison table of experiment.py's run folders.

    python plot_results.py streaming_experiments/slda_digits_plastic streaming_experiments/slda_digits_fixed
    python plot_results.py RUN [RUN ...] --output figures/imagenet.png      # also writes figures/imagenet.md

The figure has top-1 and top-5 (percent) against the classes seen, or against the training images seen when
every run is an iid or instance ordering (against the batch number when the runs mix the two), a line per
run and output layer (--heads), labelled by experiment name. For ImageNet runs of the paper's protocol
(base initialisation on 100 classes, 100 classes per increment) the values Hayes & Kanan report are drawn as
reference points, labelled as read from the paper. The Markdown table (printed, and written beside the
figure) gives per run and output layer: dataset, ordering, covariance, final top-1 and top-5, Omega_all
where offline accuracies were given (the paper's, against an offline network, --offline_accuracies; and
against the run's own offline output layer with --heads offline), images/s and wall time.
"""
import argparse
import io
import json
import os
import sys

from utils import atomic_write, save_text

# Read from the paper (Hayes & Kanan 2020): top-5 (percent) after 100 and after 1000 classes.
PAPER_TOP5 = {'SLDA, plastic covariance (paper)': ([100, 1000], [88.0, 58.0]),
              'offline ResNet-18 (paper)': ([100, 1000], [94.9, 89.1])}


def load_run(folder):
    """{'name', 'folder', 'config', 'summary'} of a run folder."""
    try:
        with open(os.path.join(folder, 'config.json')) as f:
            config = json.load(f)
        with open(os.path.join(folder, 'summary.json')) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f'{folder} is not a run folder of experiment.py (config.json and summary.json): {e}') \
            from None
    return {'name': config['arguments'].get('expt_name') or os.path.basename(os.path.normpath(folder)),
            'folder': folder, 'config': config, 'summary': summary}


def head_accuracies(run):
    """{head: ([top-1 per batch], [top-5 per batch])}, SLDA first."""
    rows = run['summary']['increments']
    accuracies = {'slda': ([r['top1'] for r in rows], [r['top5'] for r in rows])}
    for name in (rows[0].get('heads', {}) if rows else {}):
        accuracies[name] = ([r['heads'][name]['top1'] for r in rows], [r['heads'][name]['top5'] for r in rows])
    return accuracies


def x_axis(runs):
    """(label, {run name: x values}) shared by every run."""
    kinds = {'images' if run['config'].get('ordering') in ('iid', 'instance') else 'classes' for run in runs}
    values = {}
    for run in runs:
        rows = run['summary']['increments']
        if kinds == {'images'}:
            total, values[run['name']] = 0, []
            for row in rows:
                total += row['train_images']
                values[run['name']].append(total)
        elif kinds == {'classes'}:
            values[run['name']] = [row['classes_seen'] for row in rows]
        else:
            values[run['name']] = list(range(1, len(rows) + 1))
    label = {frozenset({'images'}): 'training images seen', frozenset({'classes'}): 'classes seen'}
    return label.get(frozenset(kinds), 'batch'), values


def paper_protocol(run):
    arguments = run['config']['arguments']
    return (arguments.get('dataset') == 'imagenet' and run['config'].get('ordering', 'class_incremental') ==
            'class_incremental' and arguments.get('class_increment') == 100 and
            arguments.get('base_init_classes') == 100)


def plot_runs(runs, path):
    """Write the learning curves of ``runs`` (from load_run) as a PNG at ``path``, atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    label, xs = x_axis(runs)
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=150, sharex=True)
    for run in runs:
        for head, curves in head_accuracies(run).items():
            for axis, values in zip(axes, curves):
                axis.plot(xs[run['name']], values, marker='o', markersize=3,
                          label=run['name'] if head == 'slda' else f'{run["name"]} ({head})')
    if label == 'classes seen' and any(paper_protocol(run) for run in runs):
        for (name, (x, top5)), marker in zip(PAPER_TOP5.items(), ('*', 'X')):
            axes[1].scatter(x, top5, marker=marker, s=90, color='black', zorder=3, label=f'{name}, read from it')
    for axis, title in zip(axes, ('top-1', 'top-5')):
        axis.set_title(f'{title} accuracy')
        axis.set_xlabel(label)
        axis.set_ylabel('accuracy (%)')
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc='lower left')
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png')
    plt.close(figure)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def table(runs):
    """A Markdown table: a row per run and output layer."""
    lines = ['| run | dataset | ordering | covariance | head | final top-1 | final top-5 | Omega_all top-1 / top-5 '
             '| vs offline head top-1 / top-5 | images/s | wall s |', '|' + '---|' * 11]
    for run in runs:
        config, summary = run['config'], run['summary']
        versus = summary.get('omega_vs_offline') or {}
        for head, (top1, top5) in head_accuracies(run).items():
            omega = summary.get('omega_all') if head == 'slda' else None
            cells = [run['name'], config['arguments']['dataset'], config.get('ordering', 'class_incremental'),
                     config.get('covariance', ''), head, f'{top1[-1]:.2f}' if top1 else '',
                     f'{top5[-1]:.2f}' if top5 else '',
                     f'{omega["top1"]:.3f} / {omega["top5"]:.3f}' if omega else '',
                     f'{versus[head]["top1"]:.3f} / {versus[head]["top5"]:.3f}' if head in versus else '',
                     f'{summary["images_per_second"]:.1f}' if summary.get('images_per_second') else '',
                     f'{summary["seconds"]["total_this_process"]:.1f}']
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', metavar='DIR', help='run folders of experiment.py')
    parser.add_argument('--output', metavar='PNG', default='learning_curves.png',
                        help='the figure; the table goes beside it with the extension .md (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        runs = [load_run(folder) for folder in args.folders]
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    text = table(runs)
    print(text, end='')
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    plot_runs(runs, args.output)
    save_text(os.path.splitext(args.output)[0] + '.md', [text])
    print(f'figure: {args.output}; table: {os.path.splitext(args.output)[0]}.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
