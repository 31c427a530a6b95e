"""Tests of plot_results.py: learning curves and their table.

plot_results.py: the lines drawn and the table's cells, checked against the run folders' own files, for folders
of every layout, several runs of one name, unfinished runs, and what cannot be drawn or written."""
import json
import math
import statistics

import matplotlib.axes
import pytest
from PIL import Image

import plot_results
from conftest import run
from run_folders import ARGUMENTS, FRACTIONS, arguments, copy_run, read, table_rows, unfinished


@pytest.fixture
def drawn(monkeypatch):
    """The lines plot_results draws, as (label, x values, y values): top-1's axis, then top-5's, per line."""
    lines = []
    plot = matplotlib.axes.Axes.plot

    def recording(axis, x, y, *args, **kwargs):
        lines.append((kwargs.get('label'), list(x), list(y)))
        return plot(axis, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, 'plot', recording)
    return lines


def draw(folders, tmp_path, capsys):
    """plot_results.main on ``folders`` into tmp_path/figure; (exit code, captured, {(run, head): table cells})."""
    code = plot_results.main([str(folder) for folder in folders] + ['--output', str(tmp_path / 'figure' / 'f.png')])
    out = capsys.readouterr()
    return code, out, {(cells[0], cells[4]): cells for cells in table_rows(out.out)}


def accuracies(folder):
    """{head: ([top-1 per batch], [top-5 per batch])} of a percent run, read from its summary.json directly."""
    rows = read(folder, 'summary.json')['increments']
    # schema 2 lists SLDA among the heads; earlier layouts keep its accuracies at the top of each row
    curves = {} if 'slda' in rows[0]['heads'] else {'slda': ([r['top1'] for r in rows], [r['top5'] for r in rows])}
    for head in rows[0].get('heads', {}):
        curves[head] = ([r['heads'][head]['top1'] for r in rows], [r['heads'][head]['top5'] for r in rows])
    return curves


def test_plot_results_draws_a_fresh_run_and_a_stored_one_and_tabulates_their_summaries(tmp_path, capsys, drawn,
                                                                                      monkeypatch):
    """A run of today's experiment.py with an offline head, beside the stored folder."""
    matrices = []
    draw_matrix = plot_results.draw_matrix
    monkeypatch.setattr(plot_results, 'draw_matrix', lambda figure, axis, name, matrix: (
        matrices.append(matrix), draw_matrix(figure, axis, name, matrix)))
    assert run(['--num_classes', 4, '--heads', 'slda,ncm,offline', '--no-streaming_update_sigma', '--expt_name',
                'fresh', '--save_dir', tmp_path / 'fresh'])[0] == 0
    code, out, rows = draw([tmp_path / 'fresh', ARGUMENTS], tmp_path, capsys)
    assert code == 0
    with Image.open(tmp_path / 'figure' / 'f.png') as image:
        assert image.size == (2250, 600)        # the curves, and the fresh run's accuracy matrix: the stored has none
        assert len(image.convert('RGB').getcolors(maxcolors=1 << 20)) > 50    # lines, text, markers: not blank
    assert (tmp_path / 'figure' / 'f.md').read_text() in out.out
    assert matrices == [read(tmp_path / 'fresh', 'summary.json')['metrics']['slda']['accuracy_matrix']]
    for folder, name in ((tmp_path / 'fresh', 'fresh'), (ARGUMENTS, 'arguments_layout')):
        summary = read(folder, 'summary.json')
        versus = summary['omega_vs_offline'] or {}
        for head, (top1, top5) in accuracies(folder).items():
            label = name if head == 'slda' else f'{name} ({head})'
            assert [(x, y) for line, x, y in drawn if line == label] == \
                [([r['classes_seen'] for r in summary['increments']], values) for values in (top1, top5)]
            assert rows[(name, head)][5:7] == [f'{top1[-1]:.2f}', f'{top5[-1]:.2f}']
            assert rows[(name, head)][8] == (f'{versus[head]["top1"]:.3f} / {versus[head]["top5"]:.3f}'
                                            if head in versus else '')
            assert rows[(name, head)][11] == f'{statistics.mean(top1):.2f} / {statistics.mean(top5):.2f}'
            recorded = (summary.get('metrics') or {}).get(head)     # in the fresh run only
            assert rows[(name, head)][12:] == ([f'{recorded[key]:.2f}' for key in ('average_forgetting',
                                                                                 'backward_transfer')]
                                               if recorded else ['', ''])
    assert rows[('fresh', 'offline')][3] == 'fixed' and rows[('fresh', 'ncm')][8] != ''


def test_fractions_of_an_earlier_release_are_drawn_and_tabulated_in_percent(tmp_path, capsys, drawn):
    code, _, rows = draw([FRACTIONS, ARGUMENTS], tmp_path, capsys)
    assert code == 0
    fractions = read(FRACTIONS, 'summary.json')
    top1 = [100 * r['top1'] for r in fractions['increments']]
    assert [y for label, _, y in drawn if label == 'fraction_layout'][0] == pytest.approx(top1)
    assert rows[('fraction_layout', 'slda')][1:7] == ['digits', 'class_incremental', 'plastic', 'slda',
                                                      f'{100 * fractions["final_top1"]:.2f}',
                                                      f'{100 * fractions["final_top5"]:.2f}']


def test_runs_of_one_name_keep_their_own_batches_and_labels(tmp_path, capsys, drawn):
    """Two folders of experiment name arguments_layout, one stopped after a batch: each line has its own run's
    x values, and the folders tell the lines and rows apart."""
    folders = [copy_run(ARGUMENTS, tmp_path / 'a'), copy_run(ARGUMENTS, tmp_path / 'b', summary=unfinished)]
    code, _, rows = draw(folders, tmp_path, capsys)
    assert code == 0
    for folder in folders:
        increments = read(folder, 'summary.json')['increments']
        assert [(x, y) for label, x, y in drawn if label == folder][0] == \
            ([r['classes_seen'] for r in increments], [r['top1'] for r in increments])
        assert (folder, 'ncm') in rows
    assert len({label for label, _, _ in drawn}) == 4


def test_an_unfinished_run_shows_no_final_accuracy(tmp_path, capsys):
    code, _, rows = draw([copy_run(ARGUMENTS, tmp_path / 'run', summary=unfinished)], tmp_path, capsys)
    assert code == 0
    for head in ('slda', 'ncm'):
        assert rows[('arguments_layout', head)][5:7] == ['unfinished', 'unfinished']


def test_an_unfinished_run_shows_no_forgetting_or_backward_transfer(tmp_path, capsys):
    # both are measured against the last batch: a stopped run's last saved batch is not the stream's last
    folder = tmp_path / 'run'
    assert run(['--num_classes', 6, '--no-plot', '--save_dir', folder])[0] == 0
    summary = json.loads((folder / 'summary.json').read_text())
    assert summary['metrics']['slda']['average_forgetting'] is not None
    summary['finished'] = False
    (folder / 'summary.json').write_text(json.dumps(summary))
    code, _, rows = draw([folder], tmp_path, capsys)
    (cells,) = [cells for (_, head), cells in rows.items() if head == 'slda']
    assert code == 0 and cells[12:14] == ['unfinished', 'unfinished']


def test_an_offline_head_at_zero_percent_leaves_the_ratio_undefined(tmp_path, capsys):
    """A ratio to an offline head that scored 0% on some batch has no value (results.mean_ratio gives None)."""
    offline = [{'top1': 0.0, 'top5': 100.0}, {'top1': 50.0, 'top5': 100.0}]

    def with_offline_head(summary):
        rows = summary['increments']
        for row, head in zip(rows, offline):
            row['heads']['offline'] = head
        summary['omega_vs_offline'] = {
            'slda': {'top1': None, 'top5': statistics.mean(r['top5'] / 100 for r in rows)},
            'ncm': {'top1': None, 'top5': statistics.mean(r['heads']['ncm']['top5'] / 100 for r in rows)}}

    folder = copy_run(ARGUMENTS, tmp_path / 'run', summary=with_offline_head)
    code, _, rows = draw([folder], tmp_path, capsys)
    assert code == 0
    versus = read(folder, 'summary.json')['omega_vs_offline']
    for head in ('slda', 'ncm'):
        assert rows[('arguments_layout', head)][8] == f'undefined / {versus[head]["top5"]:.3f}'
    assert rows[('arguments_layout', 'offline')][8] == ''


def test_a_nan_accuracy_is_one_line_naming_the_folder_and_value(tmp_path, capsys):
    def nan_final(summary):
        summary['increments'][-1]['top1'] = summary['final_top1'] = math.nan

    folder = copy_run(ARGUMENTS, tmp_path / 'run', summary=nan_final)
    code, out, _ = draw([folder], tmp_path, capsys)
    assert code == 2 and len(out.err.splitlines()) == 1 and folder in out.err and 'nan' in out.err


def test_output_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / 'file').write_text('not a folder')
    output = tmp_path / 'file' / 'figure.png'
    code = plot_results.main([str(ARGUMENTS), '--output', str(output)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and str(output) in err and '--output' in err


def test_a_folder_that_is_not_a_run_is_named(tmp_path, capsys):
    (tmp_path / 'empty').mkdir()
    code = plot_results.main([str(ARGUMENTS), str(tmp_path / 'empty'), '--output', str(tmp_path / 'f.png')])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and str(tmp_path / 'empty') in err and 'config.json' in err


def test_paper_points_are_drawn_for_the_papers_imagenet_protocol_only(tmp_path, capsys, monkeypatch):
    points = []
    monkeypatch.setattr(matplotlib.axes.Axes, 'scatter', lambda axis, x, y, **kwargs: points.append(list(x)))
    protocol = arguments(dataset='imagenet', class_increment=100, base_init_classes=100)
    for settings, expected in ((arguments(class_increment=100), 0), (protocol, 2)):
        folder = copy_run(ARGUMENTS, tmp_path / f'run{expected}', config=settings)
        assert draw([folder], tmp_path, capsys)[0] == 0
        assert len(points) == expected


def test_paper_points_are_drawn_for_a_run_of_this_release_on_the_papers_protocol(tmp_path, capsys, monkeypatch):
    # this release saves the increment as stream.options.classes_per_batch; plot_results looked for class_increment
    points = []
    monkeypatch.setattr(matplotlib.axes.Axes, 'scatter', lambda axis, x, y, **kwargs: points.append(list(x)))
    folder = tmp_path / 'run'
    assert run(['--num_classes', 4, '--no-plot', '--save_dir', folder])[0] == 0
    config = json.loads((folder / 'config.json').read_text())
    config['dataset'] = 'imagenet'                  # as the paper's protocol writes it, apart from the data
    config['results_settings'].update({'stream.options.classes_per_batch': 100,
                                       'stream.options.base_init_classes': 100})
    (folder / 'config.json').write_text(json.dumps(config))
    assert draw([folder], tmp_path, capsys)[0] == 0
    assert len(points) == 2


def test_the_output_extension_gives_the_format_and_another_is_refused_before_any_work(tmp_path, capsys):
    code = plot_results.main([str(ARGUMENTS), '--output', str(tmp_path / 'curves.txt')])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and 'curves.txt' in err and '.pdf' in err
    assert not list(tmp_path.iterdir())
    assert plot_results.main([str(ARGUMENTS), '--output', str(tmp_path / 'curves.pdf')]) == 0
    assert (tmp_path / 'curves.pdf').read_bytes().startswith(b'%PDF') and (tmp_path / 'curves.md').exists()


def test_without_output_the_figure_and_its_table_go_to_the_working_directory_as_help_says(tmp_path, capsys,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert plot_results.main([str(ARGUMENTS)]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ['learning_curves.md', 'learning_curves.png']
    assert capsys.readouterr().out.startswith((tmp_path / 'learning_curves.md').read_text())
    with pytest.raises(SystemExit):
        plot_results.main(['--help'])
    assert 'learning_curves.png and learning_curves.md in the working directory' in \
        ' '.join(capsys.readouterr().out.split())
