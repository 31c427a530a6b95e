"""cli.py and config.py: every declared option reaches the configuration from the command line, and the
options of a dataset, an ordering or an output layer reach the code that uses them."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import config
import data
import datasets
import heads
from conftest import make_checkpoint, run
from experiment import Experiment, list_splits, make_plan
from options import SettingError, fields_of, flag_of


def declared_fields():
    """(settings type, field) of every option with a flag: the groups and every component's options."""
    types = list(config.GROUPS) + [options for _, _, options in config.component_types()]
    seen, out = set(), []
    for settings_type in types:
        for field in dataclasses.fields(settings_type):
            if 'help' in field.metadata and field.name not in seen:
                seen.add(field.name)
                out.append(field)
    return out


def chooser_argv(name, paths):
    """The flags that choose a component taking option ``name`` (a dataset, an ordering, an output layer); image
    folders rather than imagenet, which needs its base checkpoint, and SLDA is always chosen."""
    if name == 'dataset':
        return ['--images_dir', paths['dir']]
    for chooser, component, options in config.component_types():
        if name in fields_of(options) and component not in ('imagenet', 'slda'):
            if chooser == '--dataset':
                return ['--dataset', component] + ([] if name == 'images_dir' else ['--images_dir', paths['dir']])
            if chooser == '--heads':
                return ['--heads', f'slda,{component}']
            return ['--ordering', component]
    return []


def non_default(field, paths):
    """A command-line text and the value it must give, other than the field's default."""
    special = {'images_dir': paths['dir'], 'checkpoint': paths['file'], 'labels_dir': paths['dir'],
               'feature_cache': paths['dir'], 'offline_accuracies': paths['file'], 'weights': 'IMAGENET1K_V1',
               'arch': 'resnet34', 'extract_layer': 'layer3', 'test_split': 'test', 'device': 'cpu',
               'save_dir': paths['dir'], 'expt_name': 'named', 'heads': 'slda,ncm', 'dataset': 'imagefolder'}
    if field.name in special:
        text = special[field.name]
        return text, field.metadata['parse'](text) if field.metadata['parse'] else text
    if field.metadata['choices']:
        value = next(c for c in field.metadata['choices'] if c != field.default)
        return str(value), value
    if isinstance(field.default, float):
        return '0.5', 0.5
    return '3', 3


def find(settings, name):
    """The value of field ``name`` anywhere in a Config."""
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name == name:
            return value
        for nested in (value.values() if isinstance(value, dict) else [value]):
            if dataclasses.is_dataclass(nested):
                found = find(nested, name)
                if found is not find:
                    return found
    return find


@pytest.fixture
def paths(tmp_path):
    (tmp_path / 'file').write_text('')
    return {'dir': str(tmp_path), 'file': str(tmp_path / 'file')}


@pytest.mark.parametrize('field', declared_fields(), ids=lambda field: field.name)
def test_every_option_given_on_the_command_line_reaches_the_configuration(paths, field):
    if isinstance(field.default, bool):
        flags = field.metadata['off_flags'] if field.default else field.metadata['flags'] or (f'--{field.name}',)
        argv, expected = [flags[0]], not field.default
    else:
        text, expected = non_default(field, paths)
        argv = [flag_of(field), text]
    if field.name == 'base_init_classes':
        argv += ['--class_increment', '5']
    built = cli.parse(chooser_argv(field.name, paths) + argv)
    assert find(built, field.name) == expected


def test_a_setting_that_is_not_one_is_a_type_error():
    with pytest.raises(TypeError, match='unknown setting'):
        config.make_config(class_increment=3)


def test_checks_run_where_a_notebook_builds_settings_too():
    with pytest.raises(SettingError) as refused:
        heads.SoftmaxStreamOptions(softmax_lr=float('inf'))
    assert refused.value.setting == 'softmax_lr'
    with pytest.raises(SettingError) as refused:
        datasets.CORe50Options(images_dir='x', frame_stride=0)
    assert refused.value.setting == 'frame_stride'


@pytest.fixture(scope='module')
def core50(tmp_path_factory):
    """A CORe50-shaped folder: two objects of different categories, frames 10, 20, 30, 40 of every session."""
    root = tmp_path_factory.mktemp('core50') / 'core50_128x128'
    rng = np.random.default_rng(1)
    for session in range(1, 12):
        for obj in (1, 2, 6):
            folder = root / f's{session}' / f'o{obj}'
            folder.mkdir(parents=True)
            for frame in (10, 20, 30, 40):
                Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(
                    folder / f'C_{session:02d}_{obj:02d}_{frame:03d}.png')
    return root


def test_core50_object_labels_and_frame_stride_reach_the_stream_through_the_command_line(core50, tmp_path, capsys):
    checkpoint = tmp_path / 'base.pth'
    make_checkpoint(checkpoint)
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'core50', '--images_dir', core50, '--base_init_ckpt', checkpoint, '--image_size', 32,
                     '--num_workers', 0, '--core50_labels', 'object', '--frame_stride', 40, '--save_dir', save], capsys)
    assert code == 0, out.err
    frames = [int(line.rsplit('_', 1)[1][:3]) for line in (save / 'stream_order.txt').read_text().splitlines()]
    assert set(frames) == {20} and len(frames) == 8 * 3      # frame 20 of each training session's 3 clips
    saved = json.loads((save / 'config.json').read_text())
    assert saved['classes'] == ['o1', 'o2', 'o6']            # objects 1 and 2 share category 0
    assert saved['results_settings']['data.options.frame_stride'] == 40
    assert saved['results_settings']['data.options.class_labels'] == 'object'


def test_dataset_and_ordering_options_reach_the_lister_and_the_plan(core50, monkeypatch):
    listed = {}
    real = data.core50_splits

    def spy(*args):
        listed['args'] = args
        return real(*args)

    monkeypatch.setattr(data, 'core50_splits', spy)
    built = config.make_config(dataset='core50', images_dir=str(core50), image_size=16, frame_stride=20,
                               class_labels='object', ordering='iid', images_per_batch=7, ordering_seed=4)
    splits = list_splits(built)
    assert listed['args'] == (str(core50), 16, 20, 'object')
    plan = make_plan(built, splits, None)
    assert [len(batch.train_indices) for batch in plan[:-1]] == [7] * (len(plan) - 1)
    other_seed = make_plan(dataclasses.replace(built, stream=dataclasses.replace(
        built.stream, options=dataclasses.replace(built.stream.options, ordering_seed=5))), splits, None)
    assert not np.array_equal(plan[0].train_indices, other_seed[0].train_indices)


def test_output_layer_options_reach_the_layer():
    built = cli.parse(['--heads', 'slda,softmax_stream', '--softmax_lr', '0.25', '--softmax_batch_size', '4',
                       '--shrinkage', '0.5', '--slda_dtype', 'float64', '--mask_unseen_classes'])
    from experiment import build_heads
    layers = build_heads(built, 3, 2, torch.device('cpu'))
    assert (layers['softmax_stream'].lr, layers['softmax_stream'].batch_size) == (0.25, 4)
    slda = layers['slda']
    assert (slda.shrinkage_param, slda.muK.dtype, slda.mask_unseen_classes) == (0.5, torch.float64, True)


def test_an_experiment_runs_from_python_without_a_command_line(tmp_path):
    built = config.make_config(num_classes=4, save_dir=str(tmp_path / 'out'), plot=False, progress=False)
    summary = Experiment(built, reporters=[]).run()
    assert summary['finished'] and [row['classes_seen'] for row in summary['increments']] == [2, 4]
    assert os.path.exists(tmp_path / 'out' / 'slda_model_weights_final.pth')


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
