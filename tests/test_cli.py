"""cli.py: every declared option, given on the command line, reaches the configuration."""
import dataclasses

import pytest
import torch

import cli
import config
from options import fields_of, flag_of


def declared_fields():
    """Every option with a flag: the groups' and every component's."""
    return list(config.declared_fields().values())


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
               'save_dir': paths['dir'], 'expt_name': 'named', 'heads': 'slda,ncm', 'dataset': 'imagefolder',
               'split_file': paths['file']}
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
    if field.name == 'projection_seed':
        argv += ['--random_projection', '16']
    if field.name == 'class_order_rng':     # it draws with a seed
        argv += ['--class_order_seed', '5']
    built = cli.parse(chooser_argv(field.name, paths) + argv)
    assert find(built, field.name) == expected


@pytest.mark.parametrize('argv,fragments', [
    (['--class_incremnt', '4'], ['unrecognized arguments: --class_incremnt 4', 'did you mean --class_increment?']),
    (['--shrink', '0.1'], ['unrecognized arguments: --shrink', 'did you mean --shrinkage?']),   # no abbreviations
    (['--class_increment', 'x'], ["--class_increment: invalid int value: 'x'"]),
])
def test_a_command_line_argparse_refuses_is_one_line(capsys, argv, fragments):
    with pytest.raises(SystemExit) as stopped:
        cli.parse(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.count('\n') == 1 and err.startswith('error: ')
    assert 'usage:' not in err and all(fragment in err for fragment in fragments)


def test_help_names_each_setting_whose_flag_spells_it_otherwise_and_version_names_the_libraries(capsys):
    with pytest.raises(SystemExit):
        cli.parse(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    for field in declared_fields():
        if flag_of(field) != f'--{field.name}':
            assert f'[setting {field.name}]' in text, field.name
    with pytest.raises(SystemExit):
        cli.parse(['--version'])
    assert capsys.readouterr().out.startswith(f'torch {torch.__version__}')
