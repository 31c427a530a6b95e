"""Tests of feature_cache.py: the feature cache, alone and in runs.

The feature cache: same results as without it, nothing decoded on a rerun, invalidated by anything that
changes features, never fooled by an interrupted write."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import data
from conftest import (REPO, SYNSETS, age_folders, flip_a_data_bit, folder_args, folder_run, make_checkpoint, run,
                      truncate, write_jpeg)
from feature_cache import FeatureCache


def run_ok(argv):
    """experiment.main on ``argv``, which must succeed."""
    code, _ = run(argv)
    assert code == 0


def summary(save):
    return json.loads((save / 'summary.json').read_text())


def cache_dirs(cache):
    return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def test_cached_and_uncached_runs_agree_and_rerun_decodes_nothing(tmp_path):
    cache = tmp_path / 'cache'
    base = ['--num_classes', 6, '--class_increment', 2]
    run_ok(base + ['--save_dir', tmp_path / 'plain'])
    run_ok(base + ['--save_dir', tmp_path / 'first', '--feature_cache', cache])
    run_ok(base + ['--save_dir', tmp_path / 'second', '--feature_cache', cache, '--no-streaming_update_sigma'])
    run_ok(base + ['--save_dir', tmp_path / 'third', '--feature_cache', cache])
    plain, first, third = summary(tmp_path / 'plain'), summary(tmp_path / 'first'), summary(tmp_path / 'third')
    images_of_six_classes = np.bincount(load_digits().target)[:6].sum()
    assert plain['images_extracted_this_process'] == first['images_extracted_this_process'] == images_of_six_classes
    assert summary(tmp_path / 'second')['images_extracted_this_process'] == 0
    assert third['images_extracted_this_process'] == 0
    # float16 features move accuracies (in percent) by at most a test image or two
    n_test = plain['increments'][-1]['test_images']
    for a, b in zip(plain['increments'], first['increments']):
        assert abs(a['heads']['slda']['top1'] - b['heads']['slda']['top1']) <= 2 * 100 / n_test
    preds_plain = torch.load(tmp_path / 'plain' / 'preds_min_trained_0_max_trained_6.pt', weights_only=True)
    preds_first = torch.load(tmp_path / 'first' / 'preds_min_trained_0_max_trained_6.pt', weights_only=True)
    assert (preds_plain - preds_first).abs().max() < 0.05
    # a run from the cache equals the run that filled it, bit for bit
    for name in ('preds_min_trained_0_max_trained_6.pt', 'slda_model_weights_final.pth'):
        assert (tmp_path / 'first' / name).read_bytes() == (tmp_path / 'third' / name).read_bytes()
    assert len(cache_dirs(cache)) == 1
    assert sorted(os.listdir(cache / cache_dirs(cache)[0] / 'val')) == [f'class_{k:05d}.pt' for k in range(6)]


@pytest.mark.slow
def test_rerun_with_every_class_cached_neither_imports_torchvision_nor_builds_the_network(tmp_path):
    cache, lacking = tmp_path / 'cache', tmp_path / 'cache_lacking_a_class'
    argv = ['--num_classes', 4, '--no-progress']
    run_ok(argv + ['--feature_cache', cache, '--save_dir', tmp_path / 'fill'])
    shutil.copytree(cache, lacking)
    # one class missing from the cache: the network is built and extracts just that class
    os.remove(lacking / cache_dirs(lacking)[0] / 'train' / 'class_00003.pt')
    script = ('import sys, experiment; code = experiment.main(sys.argv[1:]); '
              'print("exit", code, "torchvision imported:", "torchvision" in sys.modules)')
    reruns = {save_dir: subprocess.Popen(      # both at once: most of each is starting Python and torch
        [sys.executable, '-c', script, *map(str, argv), '--feature_cache', str(feature_cache), '--save_dir',
         str(tmp_path / save_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for save_dir, feature_cache in (('cached', cache), ('one_missing', lacking))}
    said = {}
    for save_dir, process in reruns.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        said[save_dir] = out.strip().splitlines()[-1]

    assert said['cached'] == 'exit 0 torchvision imported: False'
    config = json.loads((tmp_path / 'cached' / 'config.json').read_text())
    assert config['feature_dim'] == 512
    for name in ('preds_min_trained_0_max_trained_4.pt', 'slda_model_weights_final.pth'):
        assert (tmp_path / 'fill' / name).read_bytes() == (tmp_path / 'cached' / name).read_bytes()
    assert said['one_missing'] == 'exit 0 torchvision imported: True'
    class_3_train_images = (data.digits_splits().train.labels == 3).sum()
    assert summary(tmp_path / 'one_missing')['images_extracted_this_process'] == class_3_train_images
    assert os.path.exists(lacking / cache_dirs(lacking)[0] / 'train' / 'class_00003.pt')


def test_changed_layer_or_weights_file_invalidates_cache(tmp_path, image_folder):
    root, _ = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt, seed=1)
    cache = tmp_path / 'cache'
    argv = ['--dataset', 'imagefolder', '--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 3,
            '--image_size', 32, '--num_workers', 0, '--feature_cache', cache]
    total_images = 17 + 10
    run_ok(argv + ['--save_dir', tmp_path / 'a'])
    assert summary(tmp_path / 'a')['images_extracted_this_process'] == total_images
    run_ok(argv + ['--save_dir', tmp_path / 'a_again'])
    assert summary(tmp_path / 'a_again')['images_extracted_this_process'] == 0
    first, again = (json.loads((tmp_path / name / 'config.json').read_text())['weights'] for name in ('a', 'a_again'))
    assert first.startswith('loaded ')
    assert again == f'checkpoint {ckpt}, loaded only when a feature is missing from the cache'
    run_ok(argv + ['--save_dir', tmp_path / 'b', '--extract_layer', 'layer4.0'])
    assert summary(tmp_path / 'b')['images_extracted_this_process'] == total_images
    make_checkpoint(ckpt, seed=2)                                     # same path, new weights
    run_ok(argv + ['--save_dir', tmp_path / 'c'])
    assert summary(tmp_path / 'c')['images_extracted_this_process'] == total_images
    assert len(cache_dirs(cache)) == 3
    # a changed image file invalidates just its class
    write_jpeg(root / 'train' / 'n01000002' / 'n01000002_0000.JPEG', seed=999, size=(50, 20))
    run_ok(argv + ['--save_dir', tmp_path / 'd'])
    assert summary(tmp_path / 'd')['images_extracted_this_process'] == 4     # class n01000002 has 4 images
    assert len(cache_dirs(cache)) == 3


@pytest.mark.slow
def test_interrupted_cache_write_is_not_reused(tmp_path):
    cache = tmp_path / 'cache'
    argv = [sys.executable, os.path.join(REPO, 'experiment.py'), '--num_classes', '4', '--feature_cache', str(cache),
            '--no-progress']
    env = dict(os.environ, SLDA_CRASH_AT='write/class_:2')   # dies after the 2nd cache file's temporary write
    killed = subprocess.run(argv + ['--save_dir', str(tmp_path / 'killed')], env=env, capture_output=True,
                            cwd=tmp_path, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    train_dir = cache / cache_dirs(cache)[0] / 'train'
    names = sorted(os.listdir(train_dir))
    assert names[0].startswith('.class_00001.pt.') and names[0].endswith('.tmp')
    assert names[1:] == ['class_00000.pt']
    # corrupt the finished file too: a damaged entry must be recomputed, not trusted
    (train_dir / 'class_00000.pt').write_bytes(b'garbage')
    run_ok(['--num_classes', 4, '--feature_cache', cache, '--save_dir', tmp_path / 'after'])
    images_per_class = np.bincount(load_digits().target)
    assert summary(tmp_path / 'after')['images_extracted_this_process'] == images_per_class[:4].sum()
    run_ok(['--num_classes', 4, '--save_dir', tmp_path / 'reference', '--feature_cache', tmp_path / 'fresh_cache'])
    for name in ('accuracies_min_trained_0_max_trained_4.json', 'slda_model_weights_final.pth'):
        assert (tmp_path / 'after' / name).read_bytes() == (tmp_path / 'reference' / name).read_bytes()
    assert np.load(tmp_path / 'after' / 'digits_train_labels.npy').shape == (1343,)


def test_cache_check_listing_skips_sizes_but_notices_renamed_files(tmp_path, image_folder):
    root, _ = image_folder
    age_folders(root)          # old enough for the saved listing to be trusted, as a real dataset's would be
    cache = tmp_path / 'cache'
    argv = ['--dataset', 'imagefolder', '--images_dir', root, '--class_increment', 3, '--image_size', 32,
            '--num_workers', 0, '--feature_cache', cache]
    run_ok(argv + ['--save_dir', tmp_path / 'fill'])                            # filled checking sizes
    run_ok(argv + ['--save_dir', tmp_path / 'listing', '--cache_check', 'listing'])
    assert summary(tmp_path / 'listing')['images_extracted_this_process'] == 0
    assert len(os.listdir(cache / 'listings')) == 1
    # rewritten in place with another size: only the size check notices
    write_jpeg(root / 'train' / 'n01000002' / 'n01000002_0000.JPEG', seed=999, size=(50, 20))
    run_ok(argv + ['--save_dir', tmp_path / 'in_place', '--cache_check', 'listing'])
    assert summary(tmp_path / 'in_place')['images_extracted_this_process'] == 0
    run_ok(argv + ['--save_dir', tmp_path / 'sizes'])
    assert summary(tmp_path / 'sizes')['images_extracted_this_process'] == 4       # that class, 4 images
    # replaced by a rename: the folder's modification time changes, both checks notice
    write_jpeg(tmp_path / 'new.jpg', seed=1234)
    os.replace(tmp_path / 'new.jpg', root / 'train' / 'n01000004' / 'n01000004_0000.JPEG')
    run_ok(argv + ['--save_dir', tmp_path / 'renamed', '--cache_check', 'listing'])
    assert summary(tmp_path / 'renamed')['images_extracted_this_process'] == 3     # class n01000004, 3 images


class TinySplit:
    """What FeatureCache asks of a split: labels (classes 0, 1 and 2 interleaved) and class fingerprints."""
    labels = np.array([0, 1, 0, 2, 1, 0, 1, 1], dtype=np.int64)

    def class_fingerprint(self, label, sizes=True):
        return f'class {label} {"sizes" if sizes else "listing"}'


def class_images(label):
    return torch.from_numpy(np.flatnonzero(TinySplit.labels == label))


def written_class_1(tmp_path, dtype=torch.float16):
    """A cache holding class 1 (images 1, 4, 6, 7; 6 unreadable) and the features written."""
    cache = FeatureCache(str(tmp_path / 'cache'), 'key', dtype)
    features = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    stored = cache.write(TinySplit(), 'train', 1, features, torch.tensor([1, 4, 7]), torch.tensor([6]))
    return cache, stored


def test_a_written_class_is_read_as_stored(tmp_path):
    cache, stored = written_class_1(tmp_path)
    features, indices, skipped = cache.read(TinySplit(), 'train', 1)
    assert torch.equal(features, stored) and stored.dtype == torch.float16
    assert indices.tolist() == [1, 4, 7] and skipped == [6]


def test_features_beyond_the_range_of_float16_are_refused_naming_cache_dtype(tmp_path):
    cache = FeatureCache(str(tmp_path / 'cache'), 'key', torch.float16)
    features = torch.tensor([[1.0, 2.0], [3.0, torch.finfo(torch.float16).max * 1.5]])
    with pytest.raises(ValueError, match='--cache_dtype float32') as raised:
        cache.write(TinySplit(), 'train', 2, features[:1], torch.tensor([3]), torch.tensor([], dtype=torch.int64))
        cache.write(TinySplit(), 'train', 0, features, torch.tensor([0, 2]), torch.tensor([5]))
    assert cache.path('train', 0) in str(raised.value)
    assert not os.path.exists(cache.path('train', 0))
    wide = FeatureCache(str(tmp_path / 'cache'), 'wide', torch.float32)       # float32 holds them
    assert torch.equal(wide.write(TinySplit(), 'train', 0, features, torch.tensor([0, 2]), torch.tensor([5])),
                       features)


@pytest.mark.parametrize('scale', [1e-10, 1e-6])
def test_features_too_small_for_float16_are_refused_naming_cache_dtype(tmp_path, scale):
    # a randomly initialised network's features can be 1e-10: in float16 they became zeros and the run scored 0%
    cache = FeatureCache(str(tmp_path / 'cache'), 'key', torch.float16)
    features = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).abs() + 0.5
    features[1] *= scale
    with pytest.raises(ValueError, match=r'row 1\) lose their precision in float16 .*--cache_dtype float32') as raised:
        cache.write(TinySplit(), 'train', 1, features, torch.tensor([1, 4, 7]), torch.tensor([6]))
    assert cache.path('train', 1) in str(raised.value)
    assert not os.path.exists(cache.path('train', 1))
    small = FeatureCache(str(tmp_path / 'cache'), 'small', torch.float32)      # float32 holds them
    assert torch.equal(small.write(TinySplit(), 'train', 1, features, torch.tensor([1, 4, 7]), torch.tensor([6])),
                       features)
    features[1] /= scale                # float16's own rounding (at most 2^-11 of a value) is accepted
    features[2] = 0                     # and so is a row of zeros
    stored = cache.write(TinySplit(), 'train', 1, features, torch.tensor([1, 4, 7]), torch.tensor([6]))
    assert torch.allclose(stored.float(), features, rtol=2 ** -11)


def damaged(entry, what):
    """``entry`` (a class file of class 1) damaged as ``what`` says."""
    features, indices = entry['features'], entry['indices']
    changes = {
        'nan feature': {'features': features.index_put((torch.tensor(1), torch.tensor(2)),
                                                       torch.tensor(float('nan'), dtype=features.dtype))},
        'infinite feature': {'features': torch.full_like(features, float('inf'))},
        'another precision': {'features': features.double()},
        'image of another class': {'indices': torch.tensor([1, 4, 5])},
        'image beyond the split': {'indices': torch.tensor([1, 4, 70])},
        'a row lost': {'features': features[:2], 'indices': indices[:2]},
        'an image twice': {'indices': torch.tensor([1, 4, 4])},
        'out of order': {'indices': torch.tensor([4, 1, 7])},
        'skipped and read': {'skipped': torch.tensor([7])},
        'float indices': {'indices': indices.double()},
    }[what]
    return dict(entry, **changes)


@pytest.mark.parametrize('what', ['nan feature', 'infinite feature', 'another precision', 'image of another class',
                                  'image beyond the split', 'a row lost', 'an image twice', 'out of order',
                                  'skipped and read', 'float indices'])
def test_an_entry_this_program_would_not_write_is_recomputed(tmp_path, what):
    cache, _ = written_class_1(tmp_path)
    path = cache.path('train', 1)
    torch.save(damaged(torch.load(path, weights_only=True), what), path)
    assert cache.read(TinySplit(), 'train', 1) is None


def test_an_entry_with_a_flipped_bit_is_recomputed(tmp_path):
    """torch.load checks no CRC: without the check a bit flipped on disk loads as another feature value."""
    cache, stored = written_class_1(tmp_path, dtype=torch.float32)
    path = cache.path('train', 1)
    flip_a_data_bit(Path(path))
    assert not torch.equal(torch.load(path, weights_only=True)['features'], stored)     # it did hit the features
    assert cache.read(TinySplit(), 'train', 1) is None


def test_run_whose_features_overflow_float16_stops_naming_cache_dtype(tmp_path, image_folder, capsys):
    root, _ = image_folder
    model = make_checkpoint(tmp_path / 'plain.pth')
    state = model.state_dict()
    for name in ('layer4.1.bn2.weight', 'layer4.1.bn2.bias'):      # the extracted layer's output, scaled up
        state[name] = state[name] * 1e6
    torch.save({'state_dict': {'module.' + k: v for k, v in state.items()}}, tmp_path / 'large.pth')
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--base_init_ckpt', tmp_path / 'large.pth',
                     '--class_increment', 3, '--image_size', 32, '--num_workers', 0,
                     '--feature_cache', tmp_path / 'cache', '--save_dir', tmp_path / 'save'], capsys)
    assert code == 2 and '--cache_dtype float32' in out.err and 'class_00000.pt' in out.err, out.err


def test_a_file_name_that_is_not_utf8_works_with_the_feature_cache(tmp_path, image_folder, capsys):
    root, _ = image_folder
    folder = os.fsencode(root / 'train' / SYNSETS[0])
    source = os.path.join(folder, f'{SYNSETS[0]}_0000.JPEG'.encode())
    os.rename(source, os.path.join(folder, b'caf\xe9.JPEG'))       # Latin-1, not UTF-8
    code, out = run(folder_run(root, tmp_path, '--feature_cache', tmp_path / 'cache'), capsys)
    assert code == 0, out.err
    order = (tmp_path / 'out' / 'stream_order.txt').read_bytes()
    assert b'caf\xe9.JPEG' in order


def test_a_cache_entry_of_another_width_is_extracted_again(tmp_path, image_folder, capsys):
    root, _ = image_folder
    cache = tmp_path / 'cache'
    assert run(folder_run(root, tmp_path, '--feature_cache', cache, name='fill'), capsys)[0] == 0
    [key] = [name for name in os.listdir(cache) if name != 'listings']
    path = cache / key / 'train' / 'class_00001.pt'
    entry = torch.load(path, weights_only=True)
    entry['features'] = entry['features'][:, :256]
    torch.save(entry, path)
    code, out = run(folder_run(root, tmp_path, '--feature_cache', cache, name='again'), capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'again' / 'summary.json').read_text())['images_extracted_this_process'] == 4


def test_the_feature_cache_never_serves_another_folders_features(tmp_path, capsys):
    """Two folders with the same file names and sizes (uncompressed BMP) but different pixels."""
    from PIL import Image
    roots = []
    for name, shade in (('a', 0), ('b', 255)):
        for split in ('train', 'val'):
            for k in range(2):
                folder = tmp_path / name / split / f'class{k}'
                folder.mkdir(parents=True)
                for j in range(2):
                    pixels = np.full((16, 16, 3), abs(shade - 60 * k - 20 * j), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f'{j}.bmp')
        roots.append(tmp_path / name)
    cache = tmp_path / 'cache'
    for root in roots:
        code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--feature_cache', cache,
                         '--save_dir', tmp_path / f'out_{root.name}', '--class_increment', 2, '--image_size', 32,
                         '--num_workers', 0], capsys)
        assert code == 0, out.err
        summary = json.loads((tmp_path / f'out_{root.name}' / 'summary.json').read_text())
        assert summary['images_extracted_this_process'] == 8, root.name


def test_skipped_images_are_reported_again_from_the_cache(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    truncate(bad)
    cache = tmp_path / 'cache'
    argv = folder_args(root, tmp_path, '--feature_cache', cache)
    assert run(argv + ['--save_dir', tmp_path / 'first', '--skip_bad_images'], capsys)[0] == 0
    assert run(argv + ['--save_dir', tmp_path / 'second', '--skip_bad_images'], capsys)[0] == 0
    summary = json.loads((tmp_path / 'second' / 'summary.json').read_text())
    assert summary['images_extracted_this_process'] == 0 and summary['skipped_images'] == [str(bad)]
    code, out = run(argv + ['--save_dir', tmp_path / 'third'], capsys)
    assert code == 2 and f'cannot read image {bad}' in out.err
