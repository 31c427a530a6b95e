"""Helpers shared by the test modules: a tiny ImageNet-shaped folder, checkpoints, running experiment.py."""
import os
import time

import numpy as np
import pytest
import torch
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
    curve unless ``argv`` asks for it with --plot; (exit code, captured)."""
    argv = [str(a) for a in argv]
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
