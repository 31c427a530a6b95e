import os

import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageNet-like folder: train/ and val/ with synset-named class folders of JPEG files, plus label
    files in the original's format under labels/."""
    root = tmp_path / 'images'
    seed = 0
    for split, per_class in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        for k, (synset, count) in enumerate(zip(SYNSETS, per_class)):
            os.makedirs(root / split / synset)
            for j in range(count):
                seed += 1
                write_jpeg(root / split / synset / f'{synset}_{j:04d}.JPEG', seed=seed * 7 + k)
    labels = tmp_path / 'labels'
    labels.mkdir()
    for split, per_class in (('train', TRAIN_PER_CLASS), ('val', VAL_PER_CLASS)):
        values = np.repeat(np.array(STREAM_POSITION, dtype=np.int64), per_class)
        np.save(labels / f'imagenet_{split}_labels.npy', values)
    return root, labels
