"""Tests of runs.py: load_run on every layout of run folder.

runs.load_run on the three layouts of run folders, checked against the folders' files read directly; what is
not a run folder, or holds no accuracy, is a ValueError naming the folder and the problem."""
import dataclasses
import itertools
import math

import pytest

import runs
from run_folders import ARGUMENTS, FRACTIONS, FREE_ARGUMENTS, copy_run, read, schema_2, unfinished


def expected_settings(arguments):
    """results_settings of the 'arguments' layouts: arguments but the free ones, feature_cache as cached or not."""
    settings = {name: value for name, value in arguments.items() if name not in FREE_ARGUMENTS}
    settings['feature_cache'] = arguments['feature_cache'] is not None
    return settings


def test_the_earliest_layout_is_read_in_percent():
    run = runs.load_run(str(FRACTIONS))
    config, summary = read(FRACTIONS, 'config.json'), read(FRACTIONS, 'summary.json')
    rows = summary['increments']
    assert 'accuracy_unit' not in summary and 'covariance' not in config and 'ordering' not in config
    assert (run.name, run.folder, run.dataset, run.ordering, run.covariance, run.finished, run.heads) == \
        ('fraction_layout', str(FRACTIONS), 'digits', 'class_incremental', 'plastic', True, ('slda',))
    assert config['arguments']['streaming_update_sigma'] is True
    for key, curves, finals in (('top1', run.top1, run.final_top1), ('top5', run.top5, run.final_top5)):
        assert curves['slda'] == pytest.approx([100 * row[key] for row in rows])
        assert finals == pytest.approx({'slda': 100 * summary[f'final_{key}']})
    assert run.classes_seen == tuple(row['classes_seen'] for row in rows)
    assert run.train_images_seen == tuple(itertools.accumulate(row['train_images'] for row in rows))
    assert run.batch_numbers == tuple(range(1, len(rows) + 1))
    assert (run.omega_all, run.omega_vs_offline) == (None, None)
    assert (run.images_per_second, run.wall_seconds) == (summary['images_per_second'],
                                                          summary['seconds']['total_this_process'])
    assert run.results_settings == expected_settings(config['arguments'])
    assert config['arguments']['class_order_seed'] is None and run.seeds == {'seed': config['arguments']['seed']}


def test_todays_layout_gives_every_head_slda_first():
    run = runs.load_run(str(ARGUMENTS))
    config, summary = read(ARGUMENTS, 'config.json'), read(ARGUMENTS, 'summary.json')
    rows = summary['increments']
    assert run.heads == ('slda', 'ncm') and run.covariance == config['covariance']
    for key, curves, finals in (('top1', run.top1, run.final_top1), ('top5', run.top5, run.final_top5)):
        assert curves == {'slda': tuple(row[key] for row in rows),
                          'ncm': tuple(row['heads']['ncm'][key] for row in rows)}
        assert finals == {'slda': summary[f'final_{key}'], 'ncm': rows[-1]['heads']['ncm'][key]}
    assert run.train_images_seen == tuple(row['train_images_so_far'] for row in rows)
    assert run.omega_all == summary['omega_all'] and run.omega_all is not None
    assert run.results_settings == expected_settings(config['arguments'])
    assert run.setting('class_increment') == config['arguments']['class_increment']
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.name = 'another'


def test_schema_2_reads_as_the_same_run_written_today(tmp_path):
    folder, config, summary = schema_2(tmp_path / 'new', seed=3)
    run, today = runs.load_run(folder), runs.load_run(str(ARGUMENTS))
    assert (run.name, run.dataset, run.ordering, run.covariance, run.finished, run.heads) == \
        ('schema_2', 'digits', 'class_incremental', 'plastic', True, ('slda', 'ncm'))
    for field in ('top1', 'top5', 'classes_seen', 'train_images_seen', 'batch_numbers', 'final_top1', 'final_top5',
                  'omega_all', 'images_per_second', 'wall_seconds'):
        assert getattr(run, field) == getattr(today, field), field
    assert run.final_top1 == {head: value['top1'] for head, value in summary['final'].items()}
    assert run.results_settings == config['results_settings'] and run.seeds == {'run.seed': 3}
    assert run.setting('class_increment') == config['results_settings']['stream.class_increment']


def test_an_unfinished_run_has_no_final_accuracies(tmp_path):
    run = runs.load_run(copy_run(ARGUMENTS, tmp_path / 'run', summary=unfinished))
    assert not run.finished and run.final_top1 == run.final_top5 == {}
    assert run.batch_numbers == (1,) and run.top1['ncm'] == (read(ARGUMENTS, 'summary.json')['increments'][0]
                                                              ['heads']['ncm']['top1'],)


def broken_folders(tmp_path):
    """(folder, a word the error must name) of folders that are not runs of experiment.py."""
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'config_only').mkdir()
    (tmp_path / 'config_only' / 'config.json').write_text('{}')
    garbled = copy_run(ARGUMENTS, tmp_path / 'garbled')
    (tmp_path / 'garbled' / 'summary.json').write_text('{"finished": tr')
    listed = copy_run(ARGUMENTS, tmp_path / 'listed')
    (tmp_path / 'listed' / 'config.json').write_text('[]')
    return [(str(tmp_path / 'missing'), 'no such folder'), (str(tmp_path / 'empty'), 'config.json'),
            (str(tmp_path / 'config_only'), 'summary.json'), (garbled, 'summary.json'), (listed, 'config.json'),
            (copy_run(ARGUMENTS, tmp_path / 'no_rows', summary=lambda s: s.pop('increments')), 'increments'),
            (copy_run(FRACTIONS, tmp_path / 'no_arguments', config=lambda c: c.pop('arguments')), 'arguments'),
            (copy_run(ARGUMENTS, tmp_path / 'newer', config=lambda c: c.update(schema_version=3)), 'schema_version 3')]


def test_a_folder_that_is_not_a_run_is_a_value_error_naming_it_and_what_is_missing(tmp_path):
    for folder, named in broken_folders(tmp_path):
        with pytest.raises(ValueError) as error:
            runs.load_run(folder)
        assert folder in str(error.value) and named in str(error.value)


def edit_first_top1(value):
    def edit(summary):
        summary['increments'][0]['top1'] = value
    return edit


@pytest.mark.parametrize('source, edit, named', [
    (ARGUMENTS, edit_first_top1(math.nan), 'nan'),
    (ARGUMENTS, edit_first_top1(-1.0), '-1.0'),
    (FRACTIONS, edit_first_top1(1.5), '1.5'),       # a fraction above 1: not an accuracy
    (ARGUMENTS, lambda summary: summary.update(accuracy_unit='permille'), 'permille')])
def test_a_value_that_is_no_accuracy_is_a_value_error_naming_it(tmp_path, source, edit, named):
    folder = copy_run(source, tmp_path / 'run', summary=edit)
    with pytest.raises(ValueError) as error:
        runs.load_run(folder)
    assert folder in str(error.value) and named in str(error.value)
