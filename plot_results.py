"""Learning curves and a comparison table of experiment.py's run folders.

    python plot_results.py streaming_experiments/slda_digits_plastic streaming_experiments/slda_digits_fixed
    python plot_results.py RUN [RUN ...] --output figures/imagenet.png      # also writes figures/imagenet.md

Without --output, the figure and the table are learning_curves.png and learning_curves.md in the working
directory.

The figure has top-1 and top-5 (percent) against the classes seen, or against the training images seen when
every run is an iid or instance ordering (against the batch number when the runs mix the two), a line per
run and output layer (--heads), labelled by experiment name; beside them, SLDA's accuracy matrix as a heatmap
(metrics.py: after batch i, top-1 on the classes first fitted in batch j) for each of the first four runs that
have one of more than one batch. For ImageNet runs of the paper's protocol
(base initialisation on 100 classes, 100 classes per increment) the values Hayes & Kanan report are drawn as
reference points, labelled as read from the paper. The Markdown table (printed, and written beside the
figure) gives per run and output layer: dataset, ordering, covariance, final top-1 and top-5 ("unfinished"
while the run has not finished), Omega_all where offline accuracies were given (the paper's, against an offline
network, --offline_accuracies; and against the run's own offline output layer with --heads offline; "undefined"
where that layer scored 0% on some batch), images/s, wall time (seconds), the average incremental accuracy (mean
over batches, top-1 / top-5; "unfinished" too while the run has not finished), average forgetting and backward
transfer (percentage points; blank where the run does not record them, "unfinished" while it has not
finished). Final top-1 is the last accuracy of continual-learning papers. Runs that share an experiment name are
labelled by their folders. Folders of every release are read (runs.load_run), accuracies of earlier ones
(fractions) in percent like the others; a folder that is not a run, or an --output that cannot be written, is an
error naming it (exit 2).
"""
import argparse
import io
import os
import sys

import numpy as np

from protocol import ORDERINGS
from runs import load_run, write_output
from utils import atomic_write, save_text

# Read from the paper (Hayes & Kanan 2020): top-5 (percent) after 100 and after 1000 classes.
PAPER_TOP5 = {'SLDA, plastic covariance (paper)': ([100, 1000], [88.0, 58.0]),
              'offline ResNet-18 (paper)': ([100, 1000], [94.9, 89.1])}

MAX_HEATMAPS = 4

# The x axis, (label, the runs.Run field of its values), by the kinds of ordering the runs have; a mix of the two
# kinds has no common measure of progress but the batch.
X_AXES = {frozenset({'images'}): ('training images seen', 'train_images_seen'),
          frozenset({'classes'}): ('classes seen', 'classes_seen')}


def x_axis(runs):
    """(label, name of the runs.Run field holding each run's x values) for ``runs`` drawn together."""
    kinds = frozenset(ORDERINGS[run.ordering].x_axis if run.ordering in ORDERINGS else 'classes' for run in runs)
    return X_AXES.get(kinds, ('batch', 'batch_numbers'))


def labels(runs):
    """A label per run: its experiment name, or its folder where several runs share the name."""
    names = [run.name for run in runs]
    return [run.folder if names.count(run.name) > 1 else run.name for run in runs]


def paper_protocol(run):
    """Whether ``run`` follows the paper's ImageNet protocol: 100 base classes, then 100 at a time. The increment
    is the setting classes_per_batch (--class_increment) since schema 2, class_increment before."""
    increment = run.setting('classes_per_batch')
    increment = run.setting('class_increment') if increment is None else increment
    return (run.dataset == 'imagenet' and run.ordering == 'class_incremental' and increment == 100 and
            run.setting('base_init_classes') == 100)


FIGURE_FORMATS = ('png', 'pdf', 'svg')


def figure_format(path):
    """The figure format of ``path``'s extension, one of FIGURE_FORMATS; ValueError naming it otherwise."""
    extension = os.path.splitext(path)[1][1:].lower()
    if extension not in FIGURE_FORMATS:
        raise ValueError(f'{path} must end in .{", .".join(FIGURE_FORMATS)}: the extension gives the figure\'s '
                         f'format')
    return extension


def plot_runs(runs, path):
    """Write the learning curves of ``runs`` (runs.Run) at ``path``, atomically, in the format its extension
    names (``figure_format``: PNG, PDF or SVG)."""
    file_format = figure_format(path)
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    label, field = x_axis(runs)
    matrices = [(name, run.accuracy_matrix['slda']) for run, name in zip(runs, labels(runs))
                if len(run.accuracy_matrix.get('slda', ())) > 1][:MAX_HEATMAPS]
    novelty = [(run, name) for run, name in zip(runs, labels(runs)) if run.novelty_auroc]
    curves = 2 + bool(novelty)
    figure, axes = plt.subplots(1, curves + len(matrices), figsize=(5 * (curves + len(matrices)), 4), dpi=150,
                                squeeze=False)
    axes = axes[0]
    axes[1].sharex(axes[0])
    for axis, (name, matrix) in zip(axes[curves:], matrices):
        draw_matrix(figure, axis, name, matrix)
    if novelty:
        draw_novelty(axes[2], novelty, label, field)
    for run, name in zip(runs, labels(runs)):
        for head in run.heads:
            for axis, values in zip(axes, (run.top1[head], run.top5[head])):
                axis.plot(getattr(run, field), values, marker='o', markersize=3,
                          label=name if head == 'slda' else f'{name} ({head})')
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
    figure.savefig(buffer, format=file_format)
    plt.close(figure)
    write_output(path, atomic_write, lambda f: f.write(buffer.getvalue()))


def draw_novelty(axis, runs, label, field):
    """The novelty AUROCs of --ood_classes runs ([(runs.Run, name)]) after each batch on ``axis``."""
    for run, name in runs:
        for score, values in run.novelty_auroc.items():
            axis.plot(getattr(run, field), values, marker='o', markersize=3, label=f'{name} ({score})')
    axis.axhline(0.5, color='grey', linewidth=0.8, linestyle=':')
    axis.set_title('novelty AUROC (held-out classes)')
    axis.set_xlabel(label)
    axis.set_ylabel('AUROC')
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc='lower left')


def draw_matrix(figure, axis, name, matrix):
    """An accuracy matrix (T lists of T, percent, None where undefined) as a heatmap on ``axis``, its values written
    in the cells when there are at most 12 batches."""
    values = np.array([[np.nan if value is None else value for value in row] for row in matrix], dtype=float)
    image = axis.imshow(values, cmap='viridis', vmin=0, vmax=100)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label='top-1 (%)')
    batches = len(values)
    if batches <= 12:
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                axis.text(j, i, f'{value:.0f}', ha='center', va='center', fontsize=6,
                          color='black' if value > 60 else 'white')
    ticks = range(0, batches, max(1, batches // 10))
    axis.set_xticks(list(ticks), [str(t + 1) for t in ticks])
    axis.set_yticks(list(ticks), [str(t + 1) for t in ticks])
    axis.set_xlabel('classes first fitted in batch')
    axis.set_ylabel('after batch')
    axis.set_title(f'{name}: accuracy matrix', fontsize=9)


def number(value, digits):
    """``value`` with ``digits`` decimals; blank for None."""
    return '' if value is None else f'{value:.{digits}f}'


def ratios(pair):
    """An Omega cell: top-1 / top-5 ratios, "undefined" where a reference scored 0%; blank without ratios."""
    if not pair:
        return ''
    return ' / '.join('undefined' if pair[key] is None else f'{pair[key]:.3f}' for key in ('top1', 'top5'))


def final(run, head):
    """The final top-1 and top-5 cells of ``head``: percent, or "unfinished"."""
    if not run.finished:
        return ['unfinished', 'unfinished']
    return [number(run.final_top1[head], 2), number(run.final_top5[head], 2)]


def average_incremental(run, head):
    """The average incremental accuracy cell: top-1 / top-5 in percent, or "unfinished"."""
    if not run.finished:
        return 'unfinished'
    return ' / '.join(number(run.average_incremental[head][key], 2) for key in ('top1', 'top5'))


def final_measures(run, head):
    """The forgetting and backward transfer cells: measured against the last batch, so 'unfinished' until the
    run's last batch is in."""
    if not run.finished:
        return ['unfinished', 'unfinished']
    return [number(run.forgetting.get(head), 2), number(run.backward_transfer.get(head), 2)]


def table(runs):
    """A Markdown table: a row per run and output layer."""
    lines = ['| run | dataset | ordering | covariance | head | final top-1 | final top-5 | Omega_all top-1 / top-5 '
             '| vs offline head top-1 / top-5 | images/s | wall s | average incremental top-1 / top-5 | forgetting '
             '| backward transfer |', '|' + '---|' * 14]
    for run, name in zip(runs, labels(runs)):
        for head in run.heads:
            cells = [name, run.dataset, run.ordering, run.covariance, head, *final(run, head),
                     ratios(run.omega_all if head == 'slda' else None),
                     ratios((run.omega_vs_offline or {}).get(head)),
                     number(run.images_per_second, 1), number(run.wall_seconds, 1), average_incremental(run, head),
                     *final_measures(run, head)]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('folders', nargs='+', metavar='DIR', help='run folders of experiment.py')
    parser.add_argument('--output', metavar='FIGURE', default='learning_curves.png',
                        help='the figure, .png, .pdf or .svg; the Markdown table, the same whatever the figure\'s '
                             'format, goes beside it under the same name ending in .md (default: %(default)s and '
                             'learning_curves.md in the working directory)')
    args = parser.parse_args(argv)
    try:
        figure_format(args.output)
    except ValueError as e:
        print(f'error: --output: {e}', file=sys.stderr)
        return 2
    try:
        runs = [load_run(folder) for folder in args.folders]
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    text = table(runs)
    print(text, end='')
    markdown = os.path.splitext(args.output)[0] + '.md'
    try:
        plot_runs(runs, args.output)
        write_output(markdown, save_text, [text])
    except ValueError as e:
        print(f'error: --output: {e}', file=sys.stderr)
        return 2
    print(f'figure: {args.output}; table: {markdown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
