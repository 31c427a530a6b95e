"""End-to-end CORe50 runs: the four orderings and slda_core50.sh.

End to end on a CORe50-shaped folder: the invariants of each ordering's stream, seeds, other orderings rerun
from the feature cache, the default weights, and slda_core50.sh."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, make_checkpoint, run, setting
from core50_folder import KEPT_FRAMES, OBJECTS, build_core50, parse

TRAIN_PER_BATCH = 48                                     # 240 training images: 5 batches


@pytest.fixture(scope='module')
def core50(tmp_path_factory):
    """The CORe50-shaped folder of core50_folder.build_core50 and a base checkpoint."""
    root = build_core50(tmp_path_factory.mktemp('core50') / 'core50_128x128')
    checkpoint = root.parent / 'base.pth'
    make_checkpoint(checkpoint)
    return root, checkpoint


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
        # every category's 9 test images after every batch: its accuracy after each, as the iid orderings report it
        assert all(row['test_images_per_class'] == [9] * 10 for row in rows)
        metrics = summary(runs[name])['metrics']['slda']
        assert metrics['per_class_top1'] == [[100 * hits / 9 for hits in row['heads']['slda']['top1_hits_per_class']]
                                             for row in rows]
        assert metrics['per_class_final_top1'] == metrics['per_class_top1'][-1]
        assert len(metrics['per_class_forgetting']) == 10
        assert sorted(os.listdir(runs[name])) == sorted(
            [f'{kind}_batch_{i}.{ext}' for i in range(1, 6) for kind, ext in
             (('preds', 'pt'), ('accuracies', 'json'), ('slda_model_weights', 'pth'))] +
            ['slda_model_weights_final.pth', 'config.json', 'summary.json', 'accuracy_matrix.csv',
             'stream_order.txt', '.lock'])
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


def test_core50_defaults_to_imagenet_weights_from_the_local_cache(core50, tmp_path, capsys, monkeypatch):
    root, _ = core50
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    code, out = run(['--dataset', 'core50', '--images_dir', root, '--save_dir', tmp_path / 'out'], capsys)
    expected = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'
    assert code == 2 and f'expected {expected}' in out.err and 'never downloads' in out.err


@pytest.mark.slow
def test_slda_core50_script_runs_seeds_from_one_cache_and_leaves_finished_runs_as_they_are(core50, tmp_path):
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
    finished = [(p / 'summary.json').read_bytes() for p in folders]
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and table in again.stdout, again.stderr
    assert again.stderr.count('holds a finished run; it is left as it is') == 2
    assert [(p / 'summary.json').read_bytes() for p in folders] == finished
    # (a rerun with other extra flags is refused by experiment.py --resume, as slda_benchmark.sh's test checks)


def test_slda_core50_script_refuses_an_unknown_covariance_before_any_run(tmp_path):
    env = dict(os.environ, CORE50_DIR=str(tmp_path), SAVE_ROOT=str(tmp_path / 'results'),
               COVARIANCES='plastic plastc', PYTHON='false')      # no run may start
    done = subprocess.run(['bash', os.path.join(REPO, 'slda_core50.sh')], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr == \
        "error: COVARIANCES: unknown covariance 'plastc' (accepted: plastic, fixed)\n"
    assert not (tmp_path / 'results').exists()
