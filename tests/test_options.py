"""Tests of options.py: checks of settings and the SettingError naming them.

options.py: a setting's checks run wherever settings are built, and a value a setting cannot take is a
SettingError naming it, on the command line one line naming its flag."""
import pytest

import cli
import datasets
import heads
from conftest import assert_one_line_error, folder_run, run
from options import SettingError


def test_checks_run_where_a_notebook_builds_settings_too():
    with pytest.raises(SettingError) as refused:
        heads.SoftmaxStreamOptions(softmax_lr=float('inf'))
    assert refused.value.setting == 'softmax_lr'
    with pytest.raises(SettingError) as refused:
        datasets.CORe50Options(images_dir='x', frame_stride=0)
    assert refused.value.setting == 'frame_stride'


@pytest.mark.parametrize('argv,flag', [
    (['--heads', 'slda,softmax_stream', '--softmax_lr', 'nan'], '--softmax_lr'),
    (['--heads', 'slda,softmax_stream', '--softmax_lr', 'inf'], '--softmax_lr'),
    (['--base_init_classes', '0'], '--base_init_classes'),
    (['--dist_timeout', '0'], '--dist_timeout'),
    (['--dist_timeout', '-5'], '--dist_timeout'),
    (['--shrinkage', 'nan'], '--shrinkage'),
    (['--seed', '-1'], '--seed'),
])
def test_numbers_a_setting_cannot_take_are_refused_naming_its_flag(tmp_path, capsys, argv, flag):
    code, out = run(argv + ['--save_dir', tmp_path / 'out'], capsys)
    assert code == 2 and out.err.startswith('error: ') and out.err.count('\n') == 1 and flag in out.err
    assert not (tmp_path / 'out').exists()
    with pytest.raises(SettingError):
        cli.parse(argv)


@pytest.mark.parametrize('argv,name', [
    (['--image_size', 0], 'image_size'),
    (['--image_size', -5], 'image_size'),
    (['--num_workers', -1], 'num_workers'),
    (['--shuffle_data', '--seed', 10 ** 30], 'seed'),
    (['--ordering', 'class_iid', '--ordering_seed', -1], 'ordering_seed'),
])
def test_bad_flags_give_one_line(tmp_path, image_folder, capsys, argv, name):
    root, _ = image_folder
    argv = folder_run(root, tmp_path, *argv)
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, f'--{name}')
    with pytest.raises(SettingError) as refused:
        cli.parse([str(a) for a in argv])
    assert refused.value.setting == name


@pytest.mark.parametrize('argv,name,fragments', [
    (['--class_increment', 0], 'classes_per_batch',                      # the wording of a refused value, once
     ['(--class_increment) must be a whole number of at least 1, got 0']),
    (['--shrinkage', 2], 'shrinkage', ['--shrinkage', 'got 2']),
])
def test_bad_protocol_arguments_fail_before_work(tmp_path, capsys, argv, name, fragments):
    code, out = run(argv + ['--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, *fragments)
    assert not (tmp_path / 'out').exists()
    with pytest.raises(SettingError) as refused:
        cli.parse([str(a) for a in argv])
    assert refused.value.setting == name

