"""Tests of cifar.py: CIFAR-100 and CIFAR-10 read from folders in the official python version layout, end to end;
the class order PyCIL draws; pickles holding anything but the releases' plain data refused without being run."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

import cifar
import config
import protocol
from cifar_folder import NAMES10, build_cifar10, build_cifar100, python2_pickle
from conftest import assert_one_line_error, make_checkpoint, run, setting
from data import Preprocessing
from errors import InputError, MissingFileError
from experiment import list_splits
from options import SettingError


def pycil_order(seed, classes):
    """np.random.seed(seed); np.random.permutation(classes), as PyCIL and LAMDA-PILOT draw it, with NumPy's global
    state put back afterwards for the tests that follow."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.permutation(classes)
    finally:
        np.random.set_state(state)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    make_checkpoint(root / 'base.pth')
    return root, build_cifar100(root), build_cifar10(root)


def rows_of_file(path):
    """The images (n, 3, 32, 32) of a data file, read with the unrestricted unpickler as the release says to."""
    with open(path, 'rb') as f:
        return pickle.load(f, encoding='bytes')[b'data'].reshape(-1, 3, 32, 32)


def test_cifar100_runs_end_to_end_in_the_numpy_class_order_of_seed_1993(folders, tmp_path, capsys):
    root, (folder, labels), _ = folders
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'cifar100', '--images_dir', root, '--base_init_ckpt', root / 'base.pth',
                     '--image_size', 32, '--class_increment', 50, '--class_order_rng', 'numpy',
                     '--class_order_seed', 1993, '--save_dir', save], capsys)
    assert code == 0, out.err
    order = pycil_order(1993, 100)
    saved = json.loads((save / 'config.json').read_text())
    assert saved['class_order'] == order.tolist() and saved['classes'] == [f'class_{k:02d}' for k in range(100)]
    assert setting(saved, 'image_size') == 32 and setting(saved, 'class_order_rng') == 'numpy'
    assert 'resize 32x32 to 32x32' in saved['transform']
    for split, file_name in (('train', 'cifar100_train_labels.npy'), ('test', 'cifar100_val_labels.npy')):
        positions = np.load(save / file_name)                   # the stream position of each image's class
        classes = np.sort(labels[split])                        # images in class order
        assert np.array_equal(order[positions], classes)
    lines = (save / 'stream_order.txt').read_text().splitlines()
    assert len(lines) == 200 and lines[0].split('\t')[1].startswith('train/')
    first_batch = {int(line.split('\t')[1].split('/')[1]) for line in lines if line.startswith('1\t')}
    assert {int(labels['train'][row]) for row in first_batch} == set(order[:50].tolist())
    summary = json.loads((save / 'summary.json').read_text())
    assert [row['classes_seen'] for row in summary['increments']] == [50, 100]
    assert summary['increments'][1]['test_images'] == 100


def test_cifar10_runs_end_to_end_from_the_release_folder_itself(folders, tmp_path, capsys):
    root, _, (folder, labels) = folders
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'cifar10', '--images_dir', folder, '--base_init_ckpt', root / 'base.pth',
                     '--image_size', 32, '--class_increment', 5, '--save_dir', save], capsys)
    assert code == 0, out.err
    saved = json.loads((save / 'config.json').read_text())
    assert saved['classes'] == NAMES10 and saved['class_order'] == list(range(10))
    names = [line.split('\t')[1] for line in (save / 'stream_order.txt').read_text().splitlines()]
    # the training images of classes 0-4, class by class, each class's in the order of the five data batches
    expected = [f'data_batch_{1 + i // 10}/{i % 10}' for label in range(5)
                for i in np.flatnonzero(labels['train'] == label)] + \
        [f'data_batch_{1 + i // 10}/{i % 10}' for label in range(5, 10) for i in np.flatnonzero(labels['train'] == label)]
    assert names == expected
    assert json.loads((save / 'summary.json').read_text())['increments'][-1]['test_images'] == 20


def test_images_are_the_files_pixels_resized_to_the_network_input_224_by_default(folders):
    root, (folder, labels), _ = folders
    built = config.make_config(dataset='cifar100', images_dir=str(root), base_init_ckpt=None,
                               checkpoint=str(root / 'base.pth'))
    assert built.data.options.image_size == 224 and built.to_json()['data']['options']['image_size'] == 224
    splits = list_splits(built)
    assert splits.num_classes == 100 and len(splits.train) == 200 and len(splits.test) == 100
    assert 'resize 32x32 to 224x224' in splits.transform_description      # config.json's transform
    assert np.array_equal(splits.train.labels, np.sort(labels['train']))
    image, index, ok = splits.train[0]
    assert image.shape == (3, 224, 224) and image.dtype == torch.uint8 and ok and index == 0
    small = cifar.cifar_splits('cifar100', str(folder), Preprocessing(32, 32))    # same size: the pixels
    row = int(np.flatnonzero(labels['test'] == 7)[0])
    position = int(np.searchsorted(small.test.labels, 7))
    assert small.test.image_name(position) == f'test/{row}'
    assert np.array_equal(small.test[position][0].numpy(), rows_of_file(folder / 'test')[row])


class Runs:
    """Building it runs code: a pickle holding one of these would mkdir ``marker`` when unpickled unrestricted."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write(folder, name, value, protocol=4):
    path = folder / name
    path.write_bytes(python2_pickle(value) if protocol == 2 else pickle.dumps(value, protocol=protocol))
    return path


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path, capsys):
    folder = tmp_path / 'cifar-10-batches-py'
    folder.mkdir()
    marker = tmp_path / 'ran'
    write(folder, 'batches.meta', {b'label_names': [name.encode() for name in NAMES10]})
    write(folder, 'data_batch_1', {b'data': np.zeros((1, 3072), np.uint8), b'labels': [Runs(str(marker))]})
    checkpoint = tmp_path / 'base.pth'
    make_checkpoint(checkpoint)
    code, out = run(['--dataset', 'cifar10', '--images_dir', tmp_path, '--base_init_ckpt', checkpoint,
                     '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, str(folder / 'data_batch_1'), f'{os.mkdir.__module__}.mkdir')
    assert not marker.exists()


@pytest.mark.parametrize('content, fragments', [
    (np.zeros((2, 3072), dtype=np.float32), ['"data" must be a uint8 array (n, 3072)', 'float32']),
    (np.zeros((2, 3072), dtype=object), ['"data" must be a uint8 array (n, 3072)', 'array of object']),
    (np.full((2, 3072), 1j, dtype=object), ['refusing to load', 'it refers to builtins.complex']),
    (np.zeros((2, 100), dtype=np.uint8), ['"data" must be a uint8 array (n, 3072)', '(2, 100)']),
    ([[0] * 3072] * 2, ['"data" must be a uint8 array', 'list']),
])
def test_data_other_than_a_uint8_image_array_is_refused(tmp_path, content, fragments):
    path = write(tmp_path, 'train', {'data': content, 'fine_labels': [0, 1]})
    with pytest.raises(InputError) as refused:
        cifar.read_images(str(path), cifar.RELEASES['cifar100'])
    assert str(path) in str(refused.value) and all(fragment in str(refused.value) for fragment in fragments), \
        str(refused.value)


@pytest.mark.parametrize('labels, protocol', [([0, 100], 2), ([0, True], 4), ([0], 4), ((0, 1), 4)])
def test_labels_other_than_one_class_index_per_image_are_refused(tmp_path, labels, protocol):
    path = write(tmp_path, 'train', {b'data': np.zeros((2, 3072), np.uint8), b'fine_labels': labels}, protocol)
    with pytest.raises(InputError, match='"fine_labels" must list 2 integers in \\[0, 100\\)'):
        cifar.read_images(str(path), cifar.RELEASES['cifar100'])


def test_a_release_repickled_by_python_3_is_read_like_the_original(tmp_path):
    data = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    original = write(tmp_path, 'python2', {b'data': data, b'fine_labels': [3, 1]}, protocol=2)
    repickled = write(tmp_path, 'python3', {'data': data, 'fine_labels': [3, 1]}, protocol=5)
    for path in (original, repickled):
        images, labels = cifar.read_images(str(path), cifar.RELEASES['cifar100'])
        assert np.array_equal(images.reshape(2, -1), data) and labels.tolist() == [3, 1]


def test_a_folder_without_the_release_and_a_file_that_is_not_a_pickle_are_named(tmp_path):
    with pytest.raises(MissingFileError, match='neither CIFAR-100.s "python version" files .*cifar-100-python/'):
        cifar.cifar_splits('cifar100', str(tmp_path))
    (tmp_path / 'meta').write_text('not a pickle')
    with pytest.raises(InputError, match=f'{tmp_path / "meta"} is not a readable pickle file'):
        cifar.cifar_splits('cifar100', str(tmp_path))


def test_the_numpy_draw_needs_a_seed_and_leaves_numpy_s_global_state_alone():
    with pytest.raises(SettingError, match='--class_order_rng numpy draws the class order with --class_order_seed N'):
        config.make_config(class_order_rng='numpy')
    before = np.random.get_state()[1].copy()
    order = protocol.generated_class_order(100, 1993, 'numpy')
    assert np.array_equal(np.random.get_state()[1], before)
    assert np.array_equal(order, pycil_order(1993, 100)) and order.dtype == np.int64
