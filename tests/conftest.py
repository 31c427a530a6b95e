"""Helpers shared by the test modules: a tiny ImageNet-shaped folder, checkpoints, running experiment.py, one-line
errors, and a stream whose true class is second by score."""
import os
import struct
import time
import zipfile

# Before torch loads OpenMP, for this process and the Python processes tests start: idle OpenMP threads sleep
# instead of spinning, since pytest.ini runs two test processes at once and a spinning thread holds a core the
# other process needs (each waiting region then costs a scheduler time slice, up to 1000x a small operation).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image

import experiment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNSETS = ['n01000001', 'n01000002', 'n01000003', 'n01000004', 'n01000005', 'n01000006']
TRAIN_PER_CLASS = [3, 4, 2, 3, 3, 2]
VAL_PER_CLASS = [2, 1, 2, 2, 1, 2]
# Stream position of each synset (sorted order), as in the original's label files.
STREAM_POSITION = [3, 0, 5, 1, 4, 2]


def write_jpeg(path, seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.integers(-40, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def build_image_folder(directory):
    """A tiny ImageNet-like folder ``directory/images``: train/ and val/ with synset-named class folders of JPEG
    files, plus label files in the original's format under ``directory/labels``. Returns (images, labels)."""
    root = directory / 'images'
    seed = 0
    for split, per_class in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        for k, (synset, count) in enumerate(zip(SYNSETS, per_class)):
            os.makedirs(root / split / synset)
            for j in range(count):
                seed += 1
                write_jpeg(root / split / synset / f'{synset}_{j:04d}.JPEG', seed=seed * 7 + k)
    labels = directory / 'labels'
    labels.mkdir()
    for split, per_class in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        values = np.repeat(np.array(STREAM_POSITION, dtype=np.int64), per_class)
        np.save(labels / f'imagenet_{split}_labels.npy', values)
    return root, labels


@pytest.fixture
def image_folder(tmp_path):
    return build_image_folder(tmp_path)


def make_checkpoint(path, prefix='module.', wrap='state_dict', num_classes=100, seed=3):
    """A randomly initialised ResNet-18 saved as the original's base-init checkpoints are; returns the model."""
    import torchvision
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=num_classes)
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({wrap: state, 'epoch': 7}, path)
    return model


def run(argv, capsys=None):
    """experiment.main on ``argv`` (any values, made strings) without progress bars, and without the learning
    curve unless ``argv`` asks for it with --plot; (exit code, what it printed)."""
    argv = [str(a) for a in argv]
    if capsys:
        capsys.readouterr()         # what the test printed before (a warning of its own) is not this run's
    code = experiment.main(argv + ['--no-progress'] + ([] if '--plot' in argv else ['--no-plot']))
    return code, (capsys.readouterr() if capsys else None)


def age_folders(root, seconds=3600):
    """Give every folder below ``root`` a modification time ``seconds`` in the past."""
    past = time.time() - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def setting(config, name):
    """The value of setting ``name`` (a field name, unique across groups) in config.json's ``settings``."""
    def find(group):
        for key, value in group.items():
            if key == name:
                return [value]
            if isinstance(value, dict):
                found = find(value)
                if found:
                    return found
        return []
    found = find(config['settings'])
    assert found, f'no setting {name} in config.json'
    return found[0]


def unwritable_output(tmp_path, where, name):
    """A path no file ``name`` can be written at: where='folder', a folder standing there; where='unwritable', in
    /proc, a folder nothing can be written in whoever runs the tests (skipped without one)."""
    if where == 'folder':
        (tmp_path / name).mkdir()
        return tmp_path / name
    if not os.path.isdir('/proc'):
        pytest.skip('no /proc, a folder nothing can be written in whoever runs the tests')
    return os.path.join('/proc', name)


def assert_one_line_error(code, out, *fragments, exit_code=2):
    """experiment.main ended with ``exit_code`` and one ``error:`` line, no traceback, holding each of ``fragments``
    (the flag, argument or file the error names)."""
    assert code == exit_code, out.err
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'Traceback' not in out.err, out.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def second_by_score_data(seed=0, train_per_class=50, test_per_class=5, spread=0.01, classes=20):
    """``classes`` 2-d Gaussian classes (standard deviation ``spread``) whose means lie one unit apart on a circle;
    the test points of class k lie 0.6 of the way to the mean of class k + 1, so the true class is second by
    score. Returns (X_train, y_train, X_test, y_test)."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(classes) / classes
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1) / (2 * np.sin(np.pi / classes))
    y_train = np.repeat(np.arange(classes), train_per_class)
    X_train = means[y_train] + spread * rng.standard_normal((len(y_train), 2))
    y_test = np.repeat(np.arange(classes), test_per_class)
    X_test = means[y_test] + 0.6 * (means[(y_test + 1) % classes] - means[y_test]) + \
        spread * rng.standard_normal((len(y_test), 2))
    return [torch.as_tensor(a, dtype=torch.float32 if a.dtype == np.float64 else torch.int64)
            for a in (X_train, y_train, X_test, y_test)]


def imagenet_argv(tmp_path, root, labels):
    """The tiny folder as ImageNet (with its label files ``labels`` unless None) from a base checkpoint written to
    tmp_path, in increments of 2 classes, saved to tmp_path/out."""
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    order = ['--labels_dir', labels] if labels else []
    return ['--dataset', 'imagenet', '--images_dir', root] + order + [
        '--base_init_ckpt', ckpt, '--class_increment', 2, '--image_size', 32, '--num_workers', 0,
        '--save_dir', tmp_path / 'out']


# A small image-folder run: the tree of build_image_folder, 32-pixel inputs, decoding in this process.
SMALL = ['--class_increment', 3, '--image_size', 32, '--num_workers', 0]


def folder_run(root, tmp_path, *extra, name='out'):
    """experiment.py's arguments for a SMALL run of the image folder ``root`` into ``tmp_path/name``."""
    return ['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / name] + SMALL + list(extra)


def folder_args(root, tmp_path, *extra):
    """experiment.py's arguments for the image folder ``root`` with a base checkpoint made in ``tmp_path``,
    two classes per batch and two decoding workers."""
    ckpt = tmp_path / 'base.pth'
    if not ckpt.exists():
        make_checkpoint(ckpt)
    return ['--dataset', 'imagefolder', '--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 2,
            '--image_size', 32, '--batch_size', 4, '--num_workers', 2] + list(extra)


def truncate(path):
    """Cut a file to half its length, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def flip_a_data_bit(path, record_suffix='data/0'):
    """Flip one bit inside the stored data of the first record of the ``torch.save`` file at ``path`` whose name
    ends with ``record_suffix`` (a tensor's bytes), as a failing disk or copy would: the file still loads, with
    another value."""
    with zipfile.ZipFile(path) as archive:
        record = next(r for r in archive.infolist() if r.filename.endswith(record_suffix))
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack('<HH', data[record.header_offset + 26:record.header_offset + 30])
    data[record.header_offset + 30 + name_length + extra_length + 2] ^= 0x40
    path.write_bytes(bytes(data))
