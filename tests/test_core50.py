"""CORe50 and the four orderings: the split, the frames kept, the invariants of each ordering's stream, and
that another ordering reruns from the feature cache."""
import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

import data
import protocol
from conftest import make_checkpoint, run, setting

OBJECTS = [1, 6, 11, 16, 21, 26, 31, 36, 41, 46]       # one object of each category
KEPT_FRAMES = [10, 30, 50]
STRAY_FRAMES = [11, 20]                                  # not on the 1 fps grid: left out
TRAIN_PER_BATCH = 48                                     # 240 training images: 5 batches


@pytest.fixture(scope='module')
def core50(tmp_path_factory):
    """A CORe50-shaped folder: 11 sessions, one object per category, real file names, 3 frames on the 1 fps
    grid per clip plus stray frames and a file that is no frame."""
    root = tmp_path_factory.mktemp('core50') / 'core50_128x128'
    rng = np.random.default_rng(0)
    for session in range(1, 12):
        for obj in OBJECTS:
            folder = root / f's{session}' / f'o{obj}'
            folder.mkdir(parents=True)
            for frame in KEPT_FRAMES + STRAY_FRAMES:
                pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f'C_{session:02d}_{obj:02d}_{frame:03d}.png')
            (folder / 'notes.txt').write_text('not a frame')
    checkpoint = root.parent / 'base.pth'
    make_checkpoint(checkpoint)
    return root, checkpoint


def parse(name):
    """(session, object, frame) of a path s<S>/o<O>/C_SS_OO_FFF.png."""
    session, obj, frame = os.path.basename(name)[2:-4].split('_')
    return int(session), int(obj), int(frame)


def test_split_sessions_frames_labels_and_clips(core50):
    root, _ = core50
    splits = data.core50_splits(str(root), image_size=32)
    assert splits.classes == list(data.CORE50_CATEGORIES) and splits.test_name == 'test'
    for split, sessions in ((splits.train, {1, 2, 4, 5, 6, 8, 9, 11}), (splits.test, {3, 7, 10})):
        names = [split.image_name(i) for i in range(len(split))]
        parsed = [parse(name) for name in names]
        assert {session for session, _, _ in parsed} == sessions
        assert Counter(frame for _, _, frame in parsed) == {frame: len(sessions) * len(OBJECTS)
                                                            for frame in KEPT_FRAMES}
        assert all(name == os.path.join(f's{s}', f'o{o}', f'C_{s:02d}_{o:02d}_{f:03d}.png')
                   for name, (s, o, f) in zip(names, parsed))
        assert split.labels.tolist() == [(obj - 1) // 5 for _, obj, _ in parsed]
        # a clip is one session's recording of one object, its frames contiguous and in temporal order
        clip_of = {}
        for clip, (session, obj, _) in zip(split.clips.tolist(), parsed):
            assert clip_of.setdefault(clip, (session, obj)) == (session, obj)
        assert len(clip_of) == len(sessions) * len(OBJECTS)
        for clip in clip_of:
            frames = [parsed[i][2] for i in np.flatnonzero(split.clips == clip)]
            assert frames == KEPT_FRAMES and np.ptp(np.flatnonzero(split.clips == clip)) == len(KEPT_FRAMES) - 1
    assert len(splits.train) == 8 * 10 * 3 and len(splits.test) == 3 * 10 * 3
    objects = data.core50_splits(str(root), image_size=32, labels='object', frame_stride=40)   # frames 20, 60, ...
    assert objects.classes == [f'o{o}' for o in OBJECTS] and objects.train.labels.max() == len(OBJECTS) - 1
    assert {parse(objects.train.image_name(i))[2] for i in range(len(objects.train))} == {20}


def test_missing_session_is_named(tmp_path):
    (tmp_path / 's1').mkdir()
    with pytest.raises(FileNotFoundError, match=r's2 is missing.*sessions 1, 2, 4, 5, 6, 8, 9, 11'):
        data.core50_splits(str(tmp_path))


def stream(save):
    """[(batch, session, object, frame), ...] from a run's stream_order.txt."""
    lines = (save / 'stream_order.txt').read_text().splitlines()
    return [(int(batch), *parse(name)) for batch, name in (line.split('\t') for line in lines)]


def clips_in_order(order):
    """True when each clip's frames are contiguous in ``order`` and in temporal order."""
    runs = [key for i, key in enumerate((s, o) for _, s, o, _ in order)
            if i == 0 or key != (order[i - 1][1], order[i - 1][2])]
    frames = {}
    for _, session, obj, frame in order:
        frames.setdefault((session, obj), []).append(frame)
    return len(runs) == len(frames) and all(f == sorted(f) for f in frames.values())


@pytest.fixture(scope='module')
def runs(core50, tmp_path_factory):
    """Each ordering with seed 0 (and iid with seed 1, and class_instance again with seed 0), one cache."""
    root, checkpoint = core50
    out = tmp_path_factory.mktemp('core50_runs')
    common = ['--dataset', 'core50', '--images_dir', root, '--base_init_ckpt', checkpoint, '--image_size', 32,
              '--num_workers', 0, '--feature_cache', out / 'cache', '--images_per_batch', TRAIN_PER_BATCH]
    done = {}
    for name, extra in (('class_instance', []), ('iid', []), ('iid_seed1', ['--ordering_seed', 1]),
                        ('class_iid', []), ('instance', []), ('class_instance_again', [])):
        ordering = name.split('_seed')[0].replace('_again', '')
        argv = common + ['--ordering', ordering, '--save_dir', out / name] + extra
        if ordering.startswith('class'):
            argv.remove('--images_per_batch')
            argv.remove(TRAIN_PER_BATCH)
        code, _ = run(argv)
        assert code == 0, name
        done[name] = out / name
    return done


def summary(save):
    return json.loads((save / 'summary.json').read_text())


def test_iid_and_instance_batches_are_fixed_sizes_evaluated_on_all_test_images(runs):
    for name in ('iid', 'instance'):
        order = stream(runs[name])
        assert [batch for batch, *_ in order] == [1 + i // TRAIN_PER_BATCH for i in range(240)]
        assert sorted((s, o, f) for _, s, o, f in order) == sorted(
            (s, o, f) for s in (1, 2, 4, 5, 6, 8, 9, 11) for o in OBJECTS for f in KEPT_FRAMES)
        rows = summary(runs[name])['increments']
        assert [row['test_images'] for row in rows] == [90] * 5
        assert [row['train_images_so_far'] for row in rows] == [48, 96, 144, 192, 240]
        assert sorted(os.listdir(runs[name])) == sorted(
            [f'{kind}_batch_{i}.{ext}' for i in range(1, 6) for kind, ext in
             (('preds', 'pt'), ('accuracies', 'json'), ('slda_model_weights', 'pth'))] +
            ['slda_model_weights_final.pth', 'config.json', 'summary.json', 'stream_order.txt', '.lock'])
    assert clips_in_order(stream(runs['instance']))
    assert not clips_in_order(stream(runs['iid']))


def test_class_orderings_stream_two_categories_per_batch_and_evaluate_the_seen_ones(runs):
    for name in ('class_iid', 'class_instance'):
        order = stream(runs[name])
        categories = [(obj - 1) // 5 for _, _, obj, _ in order]
        blocks = [c for i, c in enumerate(categories) if i == 0 or c != categories[i - 1]]
        assert sorted(blocks) == list(range(10))                # each category in one contiguous block
        per_batch = {}
        for (batch, *_), category in zip(order, categories):
            per_batch.setdefault(batch, set()).add(category)
        assert list(per_batch) == [1, 2, 3, 4, 5] and all(len(c) == 2 for c in per_batch.values())
        rows = summary(runs[name])['increments']
        assert [row['classes_seen'] for row in rows] == [2, 4, 6, 8, 10]
        assert [row['test_images'] for row in rows] == [18, 36, 54, 72, 90]      # 9 test images per category
        assert blocks != sorted(blocks)                          # the category order is drawn, not sorted
    assert clips_in_order(stream(runs['class_instance']))
    assert not clips_in_order(stream(runs['class_iid']))


def test_seeds_reproduce_and_change_the_order_and_other_orderings_rerun_from_the_cache(runs):
    assert stream(runs['class_instance']) == stream(runs['class_instance_again'])
    assert stream(runs['iid']) != stream(runs['iid_seed1'])
    assert sorted(stream(runs['iid'])) != stream(runs['iid'])
    assert summary(runs['class_instance'])['images_extracted_this_process'] == 240 + 90
    for name in ('iid', 'iid_seed1', 'class_iid', 'instance', 'class_instance_again'):
        assert summary(runs[name])['images_extracted_this_process'] == 0, name
    config = json.loads((runs['iid_seed1'] / 'config.json').read_text())
    assert config['ordering'] == 'iid' and setting(config, 'ordering_seed') == 1
    assert setting(config, 'base_init') is False and config['class_order'] is None


def test_orderings_give_every_training_image_once_in_the_stated_order():
    labels = np.repeat(np.arange(4), [6, 4, 6, 8])
    clips = np.repeat(np.arange(8), [3, 3, 2, 2, 3, 3, 4, 4])
    test_labels = np.repeat(np.arange(4), 2)
    for plan in (protocol.iid(labels, test_labels, 5, seed=3), protocol.instance(labels, clips, test_labels, 5, 3),
                 protocol.class_iid(labels, test_labels, 3, seed=3),
                 protocol.class_instance(labels, clips, test_labels, 3, seed=3)):
        fitted = np.concatenate([batch.train_indices for batch in plan])
        assert sorted(fitted.tolist()) == list(range(len(labels)))
        assert plan[0].base_init is False and [batch.number for batch in plan] == list(range(1, len(plan) + 1))
    plan = protocol.class_instance(labels, clips, test_labels, 3, seed=3, base_init=True)
    assert [batch.base_init for batch in plan] == [True, False]
    assert [len(np.unique(labels[batch.train_indices])) for batch in plan] == [3, 1]
    with pytest.raises(ValueError, match='frames of each clip must be contiguous'):
        protocol.instance(labels, np.r_[clips[1:], clips[0]], test_labels, 5, 3)


def test_core50_defaults_to_imagenet_weights_from_the_local_cache(core50, tmp_path, capsys, monkeypatch):
    root, _ = core50
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    code, out = run(['--dataset', 'core50', '--images_dir', root, '--save_dir', tmp_path / 'out'], capsys)
    expected = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'
    assert code == 2 and f'expected {expected}' in out.err and 'never downloads' in out.err


@pytest.mark.slow
def test_slda_core50_script_runs_seeds_from_one_cache_skips_finished_runs_and_tabulates(core50, tmp_path):
    import subprocess
    import sys

    from conftest import REPO
    root, checkpoint = core50
    env = dict(os.environ, CORE50_DIR=str(root), SAVE_ROOT=str(tmp_path / 'results'), SEEDS='0 1',
               ORDERINGS='class_instance', COVARIANCES='fixed', PYTHON=sys.executable)
    command = ['bash', os.path.join(REPO, 'slda_core50.sh'), '--base_init_ckpt', str(checkpoint), '--image_size',
               '32', '--num_workers', '0']
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    folders = sorted(p for p in (tmp_path / 'results').iterdir() if p.name.startswith('core50_'))
    assert [p.name for p in folders] == ['core50_class_instance_seed0_fixed_base_init',
                                         'core50_class_instance_seed1_fixed_base_init']
    assert [summary(p)['images_extracted_this_process'] for p in folders] == [240 + 90, 0]
    for seed, folder in enumerate(folders):             # core50's default is plastic: the script chose fixed
        config = json.loads((folder / 'config.json').read_text())
        assert (config['covariance'], config['ordering'], setting(config, 'ordering_seed')) == \
            ('fixed', 'class_instance', seed)
        # core50 has no base initialisation by default, and without one a fixed covariance is nearest class mean
        assert setting(config, 'base_init') is True
        assert config['covariance_detail'] == "fixed (the base initialisation's estimate, kept)"
    table = (tmp_path / 'results' / 'table_core50.md').read_text()
    assert table in done.stdout
    values = [summary(p)['final']['slda']['top1'] for p in folders]
    assert f'| core50 | class_instance | fixed | 2 | {sum(values) / 2:.2f} ± ' in table
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and '== class_instance' not in again.stdout        # every run was finished
