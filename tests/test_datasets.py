"""Tests of datasets.py: dataset options reach the lister and the stream.

datasets.py: a dataset's options (CORe50's labels and frame stride) reach its lister and the stream, from the
command line and from Python."""
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

import config
import data
from conftest import make_checkpoint, run
from experiment import list_splits, make_plan


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
    assert listed['args'] == (str(core50), data.Preprocessing().at_size(16).square(), 20, 'object')
    plan = make_plan(built, splits, None)
    assert [len(batch.train_indices) for batch in plan[:-1]] == [7] * (len(plan) - 1)
    other_seed = make_plan(dataclasses.replace(built, stream=dataclasses.replace(
        built.stream, options=dataclasses.replace(built.stream.options, ordering_seed=5))), splits, None)
    assert not np.array_equal(plan[0].train_indices, other_seed[0].train_indices)
