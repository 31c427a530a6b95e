"""Tests of config.py: building and checking the settings.

config.py: building the settings refuses what the run would not use, contradictions, unknown settings, and
inputs that do not exist (folders, checkpoints, devices), each a SettingError naming its flag."""
import os
import shutil

import pytest

import cli
import config
from conftest import REPO, assert_one_line_error, folder_run, imagenet_argv, run
from options import SettingError


def test_a_setting_that_is_not_one_is_a_type_error():
    with pytest.raises(TypeError, match='unknown setting'):
        config.make_config(class_increment=3)


# (command line, setting refused or None where the driver refuses it, flag named, whole message for one per kind)
@pytest.mark.parametrize('argv,name,flag,message', [
    (['--images_dir', '{root}', '--dataset', 'digits'], 'images_dir', '--images_dir',
     '--images_dir is for --dataset imagenet, imagefolder, core50, cifar100, cifar10; --dataset digits does not use it'),
    (['--image_size', 64], 'image_size', '--image_size', None),
    (['--test_split', 'test'], 'test_split', '--test_split', None),
    (['--skip_bad_images'], 'skip_bad_images', '--skip_bad_images', None),
    (['--cache_check', 'listing'], 'cache_check', '--cache_check', None),
    (['--dataset', 'imagefolder', '--images_dir', '{root}', '--frame_stride', 10], 'frame_stride', '--frame_stride',
     None),
    (['--ordering_seed', 3], 'ordering_seed', '--ordering_seed', None),
    (['--ordering', 'iid', '--shuffle_data'], 'shuffle_data', '--shuffle_data', None),
    (['--ordering', 'iid', '--class_increment', 2], 'classes_per_batch', '(--class_increment)', None),
    (['--ordering', 'class_iid', '--images_per_batch', 100], 'images_per_batch', '--images_per_batch', None),
    (['--ordering', 'instance'], None, '--ordering instance',
     '--ordering instance needs a dataset that knows its clips (core50); --dataset digits does not'),
    (['--base_init', '--no_base_init'], 'base_init', '--no_base_init',
     '--base_init and --no_base_init contradict each other; give one'),
])
def test_a_flag_the_run_does_not_use_is_an_error(tmp_path, image_folder, capsys, argv, name, flag, message):
    root, _ = image_folder
    argv = [str(a).format(root=root) for a in argv] + ['--save_dir', str(tmp_path / 'out')]
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, flag)
    if message:
        assert out.err == f'error: {message}\n'
    assert not (tmp_path / 'out').exists()
    if name:
        with pytest.raises(SettingError) as refused:
            cli.parse(argv)
        assert refused.value.setting == name


def test_label_files_and_a_class_order_seed_are_a_conflict(tmp_path, image_folder, capsys):
    root, labels = image_folder
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--labels_dir', labels,
                     '--class_order_seed', 3, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--class_order_seed 3', f'--labels_dir {labels}')
    with pytest.raises(SettingError) as refused:
        cli.parse(['--dataset', 'imagefolder', '--images_dir', str(root), '--labels_dir', str(labels),
                   '--class_order_seed', '3'])
    assert refused.value.setting == 'class_order_seed'


def test_imagenet_without_checkpoint_explains_what_is_needed(tmp_path, image_folder, capsys):
    root, _ = image_folder
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 2
    assert os.path.join(REPO, 'image_files', 'imagenet_100_class_ckpt.pth') in out.err
    assert 'image_files/README.md' in out.err and '--weights' in out.err


def test_heads_are_checked(tmp_path, capsys):
    code, out = run(['--heads', 'ncm', '--save_dir', tmp_path / 'a'], capsys)
    assert_one_line_error(code, out, '--heads', 'slda, ncm, softmax_stream, offline')
    with pytest.raises(SettingError) as refused:
        cli.parse(['--heads', 'ncm'])
    assert refused.value.setting == 'heads'


def test_labels_dir_none_streams_in_sorted_order_though_label_files_sit_in_a_default_folder(tmp_path, image_folder,
                                                                                           monkeypatch):
    root, labels = image_folder
    shutil.copytree(labels, tmp_path / 'imagenet_files')      # ./imagenet_files/, where the original reads them
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'base.pth').write_bytes(b'')                    # only its existence is checked here
    settings = dict(dataset='imagenet', images_dir=str(root), checkpoint=str(tmp_path / 'base.pth'))
    assert config.make_config(**settings).stream.options.labels_dir == os.path.abspath('imagenet_files')
    assert config.make_config(**settings, labels_dir='none').stream.options.labels_dir is None
    assert config.make_config(**settings, labels_dir='none', class_order_seed=3).stream.options.class_order_seed == 3
    argv = ['--dataset', 'imagenet', '--images_dir', str(root), '--base_init_ckpt', str(tmp_path / 'base.pth')]
    assert cli.parse(argv + ['--labels_dir', 'none']).stream.options.labels_dir is None


def test_heads_given_to_make_config_as_one_string_are_split_at_commas():
    assert config.make_config(heads='slda,ncm').output.heads == config.make_config(heads='slda, ncm').output.heads \
        == ('slda', 'ncm')
    with pytest.raises(SettingError, match="got \\('slda', 'nope'\\)"):
        config.make_config(heads='slda,nope')


@pytest.mark.parametrize('flag', ['--split_file', '--labels_dir', '--feature_cache', '--base_init_ckpt'])
def test_an_empty_value_is_refused_naming_the_flag(tmp_path, capsys, flag):
    # an unset shell variable ("--feature_cache $CACHE") used to leave the setting at its default unnoticed
    code, out = run(['--num_classes', 4, flag, '', '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, f'{flag} is given an empty value')
    assert not (tmp_path / 'out').exists()


def test_a_class_increment_too_large_for_the_classes_left_by_ood_classes_says_they_are_held_out(tmp_path, capsys):
    code, out = run(['--ood_classes', 9, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '1 classes streamed (the dataset has 10, 9 of them held out by --ood_classes)')


@pytest.mark.parametrize('argv,name,fragment', [
    (['--device', 'tpu'], 'device', '--device tpu'),
    (['--device', 'mps'], 'device', '--device mps'),
    (['--feature_cache', '{file}'], 'feature_cache', '--feature_cache {file}'),
    (['--feature_cache', '{file}/sub/cache'], 'feature_cache', '--feature_cache {file}/sub/cache cannot be made: {file} is a file'),
])
def test_bad_flags_give_one_line(tmp_path, image_folder, capsys, argv, name, fragment):
    root, _ = image_folder
    (tmp_path / 'a_file').write_text('x')
    argv = folder_run(root, tmp_path, *[str(a).format(file=tmp_path / 'a_file') for a in argv])
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, fragment.format(file=tmp_path / 'a_file'))
    with pytest.raises(SettingError) as refused:
        cli.parse([str(a) for a in argv])
    assert refused.value.setting == name


def test_a_missing_images_folder_is_one_line_naming_its_flag(tmp_path, image_folder, capsys):
    root, labels = image_folder
    argv = imagenet_argv(tmp_path, root, labels)
    argv[argv.index('--images_dir') + 1] = tmp_path / 'nowhere'
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, f'--images_dir {tmp_path / "nowhere"}')
    with pytest.raises(SettingError) as refused:
        cli.parse([str(a) for a in argv])
    assert refused.value.setting == 'images_dir'


def test_a_missing_checkpoint_is_one_line_naming_its_flag_and_where_to_read_about_it(tmp_path, image_folder, capsys):
    root, labels = image_folder
    argv = imagenet_argv(tmp_path, root, labels)
    argv[argv.index('--base_init_ckpt') + 1] = tmp_path / 'nothing.pth'
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, f'--base_init_ckpt {tmp_path / "nothing.pth"}', 'image_files/README.md')
    with pytest.raises(SettingError) as refused:
        cli.parse([str(a) for a in argv])
    assert refused.value.setting == 'checkpoint'


def test_a_flag_name_given_to_make_config_names_the_setting_it_sets():
    with pytest.raises(TypeError) as refused:
        config.make_config(class_increment=3, batch_size=8)
    assert 'classes_per_batch, set by --class_increment' in str(refused.value)
    assert 'extraction_batch_size, set by --batch_size' in str(refused.value)


def test_a_missing_images_folder_without_dataset_is_said_before_the_imagenet_checkpoint(tmp_path, capsys):
    code, out = run(['--images_dir', tmp_path / 'nowhere', '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, f'--images_dir {tmp_path / "nowhere"} does not exist')
    (tmp_path / 'mine' / 'train' / 'a').mkdir(parents=True)
    code, out = run(['--images_dir', tmp_path / 'mine', '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, 'imagenet_100_class_ckpt.pth', 'for your own data pass --dataset imagefolder')
