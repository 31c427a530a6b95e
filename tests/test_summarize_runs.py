"""Tests of summarize_runs.py: the table of means over seeds.

summarize_runs.py: mean and sample standard deviation over seeds of the runs that share every setting that
changes results, checked against statistics of the folders' own values; a folder that is not a run, or an output
that cannot be written, is one line naming it."""
import math
import statistics

import pytest

import summarize_runs
from run_folders import ARGUMENTS, FRACTIONS, arguments, copy_run, read, schema_2, table_rows, unfinished, write

# Columns of the table.
DATASET, ORDERING, COVARIANCE, RUNS, TOP1, TOP5, OMEGA1, OMEGA5, AVERAGE1, AVERAGE5, FORGETTING, SEEDS, SETTINGS = \
    range(13)


def summarize(folders, capsys, *flags):
    """summarize_runs.main; (exit code, captured, table rows as lists of cells)."""
    code = summarize_runs.main([str(folder) for folder in folders] + [str(flag) for flag in flags])
    out = capsys.readouterr()
    return code, out, table_rows(out.out)


def seeded(destination, seed, top1=None, plastic=True):
    """A copy of the stored percent run with --seed ``seed`` and the covariance of ``plastic``; with ``top1``, its
    final top-1 (the last batch's) is ``top1`` and its Omega_all top-1 top1 / 90."""
    def config(value):
        value['arguments'].update(seed=seed, streaming_update_sigma=plastic)
        value['covariance'] = 'plastic' if plastic else 'fixed'

    def summary(value):
        if top1 is not None:
            value['final_top1'] = value['increments'][-1]['top1'] = top1
            value['omega_all']['top1'] = top1 / 90

    return copy_run(ARGUMENTS, destination, config=config, summary=summary)


def test_seeds_of_one_setting_are_averaged_and_listed_and_unfinished_runs_left_out(tmp_path, capsys):
    top1 = {'plastic': [80.0, 84.5, 83.0], 'fixed': [70.25, 71.0]}
    folders = [seeded(tmp_path / f'{covariance}{seed}', seed, value, covariance == 'plastic')
               for covariance, values in top1.items() for seed, value in enumerate(values)]
    folders.append(copy_run(ARGUMENTS, tmp_path / 'stopped', summary=unfinished))
    code, out, rows = summarize(folders, capsys, '--output', tmp_path / 'table.md')
    assert code == 0 and (tmp_path / 'table.md').read_text() == out.out
    assert 'stopped' in out.err and len(rows) == 2
    top5 = read(ARGUMENTS, 'summary.json')['final_top5']
    for covariance, values in top1.items():
        row = next(row for row in rows if row[COVARIANCE] == covariance)
        omegas = [v / 90 for v in values]
        assert row[:OMEGA1 + 1] == ['digits', 'class_incremental', covariance, str(len(values)),
                                    f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}',
                                    f'{top5:.2f} ± 0.00',
                                    f'{statistics.mean(omegas):.3f} ± {statistics.stdev(omegas):.3f}']
        assert row[SEEDS] == 'seed: ' + ', '.join(str(seed) for seed in range(len(values)))
        assert row[SETTINGS] == f'streaming_update_sigma={covariance == "plastic"}'


@pytest.mark.parametrize('first, second', [
    ({'shrinkage': 1e-4, 'class_increment': 2}, {'shrinkage': 0.5, 'class_increment': 5}),
    ({'images_dir': '/data/digits_a'}, {'images_dir': '/data/digits_b'})])
def test_runs_of_other_settings_are_rows_of_their_own(tmp_path, capsys, first, second):
    folders = [copy_run(ARGUMENTS, tmp_path / f'run{seed}', config=arguments(seed=seed, **changes))
               for seed, changes in enumerate((first, second))]
    code, _, rows = summarize(folders, capsys)
    assert code == 0 and [row[RUNS] for row in rows] == ['1', '1']
    assert sorted(row[SETTINGS] for row in rows) == \
        sorted(' '.join(f'{name}={value}' for name, value in sorted(changes.items())) for changes in (first, second))


def test_a_schema_2_run_is_summarized_beside_an_arguments_one(tmp_path, capsys):
    folders = [schema_2(tmp_path / f'new{seed}', seed)[0] for seed in (0, 1)] + [copy_run(ARGUMENTS, tmp_path / 'old')]
    code, _, rows = summarize(folders, capsys)
    assert code == 0 and sorted(row[RUNS] for row in rows) == ['1', '2']
    row = next(row for row in rows if row[RUNS] == '2')
    final = read(folders[0], 'summary.json')['final']['slda']['top1']
    assert row[TOP1] == f'{final:.2f} ± 0.00' and row[SEEDS] == 'run.seed: 0, 1'


def test_fractions_of_an_earlier_release_are_summarized_in_percent(capsys):
    code, _, rows = summarize([FRACTIONS], capsys)
    summary = read(FRACTIONS, 'summary.json')
    assert code == 0 and rows[0][:TOP5 + 1] == ['digits', 'class_incremental', 'plastic', '1',
                                                f'{100 * summary["final_top1"]:.2f}',
                                                f'{100 * summary["final_top5"]:.2f}']


def not_runs(tmp_path):
    """Folders that are not runs of experiment.py, and what the error names: (folder, missing)."""
    (tmp_path / 'feature_cache').mkdir()
    (tmp_path / 'config_only').mkdir()
    (tmp_path / 'config_only' / 'config.json').write_text('{}')
    garbled = copy_run(ARGUMENTS, tmp_path / 'garbled')
    (tmp_path / 'garbled' / 'summary.json').write_text('{"finished": tr')
    return [(tmp_path / 'mistyped', 'mistyped'), (tmp_path / 'feature_cache', 'config.json'),
            (tmp_path / 'config_only', 'summary.json'), (garbled, 'summary.json')]


def test_a_folder_that_is_not_a_run_is_refused_in_one_line_naming_it(tmp_path, capsys):
    good = copy_run(ARGUMENTS, tmp_path / 'good')
    for folder, missing in not_runs(tmp_path):
        code, out, _ = summarize([good, folder], capsys)
        assert code == 2 and len(out.err.splitlines()) == 1 and str(folder) in out.err and missing in out.err
        assert out.out == ''


def test_a_nan_accuracy_is_refused_in_one_line_naming_the_folder(tmp_path, capsys):
    folders = [seeded(tmp_path / 'a', 0, 80.0), seeded(tmp_path / 'b', 1, math.nan)]
    code, out, _ = summarize(folders, capsys)
    assert code == 2 and len(out.err.splitlines()) == 1 and folders[1] in out.err and 'nan' in out.err


def test_output_into_a_missing_folder_is_written(tmp_path, capsys):
    output = tmp_path / 'tables' / 'core50' / 'table.md'
    code, out, _ = summarize([ARGUMENTS], capsys, '--output', output)
    assert code == 0 and output.read_text() == out.out


def test_output_under_a_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / 'file').write_text('not a folder')
    output = tmp_path / 'file' / 'table.md'
    code, out, _ = summarize([ARGUMENTS], capsys, '--output', output)
    assert code == 2 and len(out.err.splitlines()) == 1 and str(output) in out.err and '--output' in out.err


def test_a_seed_set_in_one_row_and_not_another_is_named(tmp_path, capsys):
    """A seeded class order and the sorted one are rows of their own, and the settings column says why."""
    folders = [copy_run(ARGUMENTS, tmp_path / 'sorted', config=arguments(class_order_seed=None)),
               copy_run(ARGUMENTS, tmp_path / 'seeded', config=arguments(class_order_seed=3)),
               copy_run(ARGUMENTS, tmp_path / 'seeded_again', config=arguments(class_order_seed=4))]
    code, _, rows = summarize(folders, capsys)
    assert code == 0 and len(rows) == 2
    # the seeded row averages seeds 3 and 4: it is labelled by being seeded, not by its first run's seed
    assert sorted(row[SETTINGS] for row in rows) == ['class_order_seed=None', 'class_order_seed=seeded']


def test_average_incremental_accuracy_and_forgetting_are_averaged_over_seeds_where_recorded(tmp_path, capsys):
    forgetting = [4.0, 7.5]
    folders = []
    for seed, value in enumerate(forgetting):
        folder, _, summary = schema_2(tmp_path / f'new{seed}', seed)
        summary['metrics'] = {'slda': {'average_forgetting': value, 'backward_transfer': -value}}
        write(folder, 'summary.json', summary)
        folders.append(folder)
    code, _, rows = summarize(folders + [copy_run(ARGUMENTS, tmp_path / 'old')], capsys)
    assert code == 0
    new = next(row for row in rows if row[RUNS] == '2')
    old = next(row for row in rows if row[RUNS] == '1')
    curves = [row['heads']['slda'] for row in summary['increments']]
    for column, key in ((AVERAGE1, 'top1'), (AVERAGE5, 'top5')):
        assert new[column] == f'{statistics.mean(c[key] for c in curves):.2f} ± 0.00'
    assert new[FORGETTING] == f'{statistics.mean(forgetting):.2f} ± {statistics.stdev(forgetting):.2f}'
    assert old[FORGETTING] == '' and old[AVERAGE1] == new[AVERAGE1].split(' ±')[0]    # the same run, earlier layout


def test_a_run_stopped_before_its_first_batch_is_listed_and_left_out(tmp_path, capsys):
    finished = [schema_2(tmp_path / f'new{seed}', seed)[0] for seed in (0, 1)]
    stopped, _, _ = schema_2(tmp_path / 'stopped')
    (tmp_path / 'stopped' / 'summary.json').unlink()        # killed before its first batch finished
    code, out, rows = summarize(finished + [stopped], capsys)
    assert code == 0 and [row[RUNS] for row in rows] == ['2']
    assert 'left out, not finished' in out.err and 'stopped' in out.err


def test_a_folder_given_more_than_once_counts_once_with_a_note(tmp_path, capsys):
    folder = seeded(tmp_path / 'run', 0, 80.0)
    (tmp_path / 'link').symlink_to(folder)
    code, out, rows = summarize([folder, folder + '/', tmp_path / 'link', seeded(tmp_path / 'other', 1, 82.0)],
                                capsys)
    assert code == 0 and [row[RUNS] for row in rows] == ['2'] and rows[0][SEEDS] == 'seed: 0, 1'
    assert out.err == f'note: counted once each, given more than once: {folder} (3 times)\n'


def test_copies_of_one_run_in_different_folders_are_averaged_with_a_warning_naming_them(tmp_path, capsys):
    folders = [seeded(tmp_path / name, 0, 80.0) for name in ('run', 'copy')] + [seeded(tmp_path / 'seed1', 1, 82.0)]
    code, out, rows = summarize(folders, capsys)
    assert code == 0 and [row[RUNS] for row in rows] == ['3']
    lines = out.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('warning: ') and 'same settings and seeds' in lines[0]
    assert folders[0] in lines[0] and folders[1] in lines[0] and folders[2] not in lines[0]
