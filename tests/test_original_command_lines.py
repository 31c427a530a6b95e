"""End to end: the original's command lines and slda_imagenet.sh.

End to end: the original's command lines (slda_imagenet.sh's, and --images_dir alone meaning imagenet with the
original's defaults and support files) run unchanged, and this project's slda_imagenet.sh."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

import pytest
from conftest import REPO, STREAM_POSITION, SYNSETS, make_checkpoint, run, setting, write_jpeg


def original_support_folder(directory, labels):
    """The original's ./imagenet_files/ in ``directory``: its two label files and a base checkpoint."""
    folder = directory / 'imagenet_files'
    folder.mkdir()
    for name in ('imagenet_train_labels.npy', 'imagenet_val_labels.npy'):
        (folder / name).write_bytes((labels / name).read_bytes())
    make_checkpoint(folder / 'imagenet_100_class_ckpt.pth')
    return folder


def test_images_dir_alone_means_imagenet_with_the_originals_defaults_and_files(tmp_path, image_folder, capsys,
                                                                                monkeypatch):
    root, labels = image_folder
    work = tmp_path / 'work'
    work.mkdir()
    folder = original_support_folder(work, labels)
    monkeypatch.chdir(work)
    small = ['--class_increment', 2, '--image_size', 32, '--num_workers', 0]
    for extra, covariance in (['--streaming_update_sigma'], 'plastic'), ([], 'fixed'):
        code, out = run(['--images_dir', root, '--expt_name', f'run_{covariance}'] + extra + small, capsys)
        assert code == 0, out.err
        config = json.loads((work / 'streaming_experiments' / f'run_{covariance}' / 'config.json').read_text())
        assert setting(config, 'dataset') == 'imagenet' and config['covariance'] == covariance
        assert setting(config, 'plastic_covariance') is (covariance == 'plastic')
        assert f'covariance: {covariance}' in out.out
        assert config['class_order'] == np.argsort(STREAM_POSITION).tolist()
        assert config['class_order_source'] == f'label files in {folder}' and config['class_order_warning'] is None
        assert setting(config, 'checkpoint') == str(folder / 'imagenet_100_class_ckpt.pth')
        assert setting(config, 'classes_per_batch') == 2 and setting(config, 'base_init_classes') == 2
    fixed = work / 'streaming_experiments' / 'run_fixed'
    weights = torch.load(fixed / 'slda_model_weights_final.pth', weights_only=True)
    base = torch.load(fixed / 'slda_model_weights_min_trained_0_max_trained_2.pth', weights_only=True)
    assert torch.equal(weights['Sigma'], base['Sigma'])           # fixed: the base initialisation's covariance


def wide_imagenet(directory, classes=101):
    """An ImageNet-shaped tree with enough classes for the original's defaults (100 base classes, increments
    of 100): a training and a test image of 16x12 pixels per class, and a shuffled stream order."""
    root = directory / 'imagenet'
    positions = np.random.default_rng(0).permutation(classes)
    for split, count in (('train', 1), ('val', 1)):
        for k in range(classes):
            (root / split / f'n{k:08d}').mkdir(parents=True)
            for j in range(count):
                write_jpeg(root / split / f'n{k:08d}' / f'{j}.JPEG', seed=k * 10 + j, size=(16, 12))
    labels = directory / 'labels'
    labels.mkdir()
    for split, count in (('train', 1), ('val', 1)):
        np.save(labels / f'imagenet_{split}_labels.npy', np.repeat(positions, count).astype(np.int64))
    return root, labels, positions


@pytest.mark.slow
def test_the_originals_slda_imagenet_command_lines_run_unchanged(tmp_path):
    root, labels, positions = wide_imagenet(tmp_path)
    work = tmp_path / 'work'
    work.mkdir()
    original_support_folder(work, labels)
    lines = (f'python -u experiment.py --images_dir {root} --streaming_update_sigma --expt_name slda_plastic',
             f'python -u experiment.py --images_dir {root} --expt_name slda_fixed')
    running = [subprocess.Popen([sys.executable, '-u', os.path.join(REPO, 'experiment.py'), *line.split()[3:]],
                                cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for line in lines]         # independent runs, at once: most of each is starting Python
    for process in running:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    for name, covariance in (('slda_plastic', 'plastic'), ('slda_fixed', 'fixed')):
        save = work / 'streaming_experiments' / name
        config = json.loads((save / 'config.json').read_text())
        assert setting(config, 'dataset') == 'imagenet' and config['covariance'] == covariance
        assert config['class_order'] == np.argsort(positions).tolist()
        assert setting(config, 'extraction_batch_size') == 256 and setting(config, 'shrinkage') == 1e-4
        summary = json.loads((save / 'summary.json').read_text())
        assert [row['classes_seen'] for row in summary['increments']] == [100, 101]
        accuracies = json.loads((save / 'accuracies_min_trained_0_max_trained_101.json').read_text())
        assert accuracies['seen_classes_top1'] == [row['heads']['slda']['top1'] for row in summary['increments']]
        assert all(value in {100 * hits / tests for hits in range(tests + 1)}
                   for value, tests in zip(accuracies['seen_classes_top5'], (100, 101)))
        base = torch.load(save / 'slda_model_weights_min_trained_0_max_trained_100.pth', weights_only=True)
        assert base['cK'][np.argsort(positions)[:100]].tolist() == [1] * 100      # the label files' base classes
        final = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
        assert torch.equal(final['Sigma'], base['Sigma']) is (covariance == 'fixed')


@pytest.mark.slow
def test_slda_imagenet_script_runs_both_covariances_sharing_the_cache(tmp_path, image_folder):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    env = dict(os.environ, IMAGENET_DIR=str(root), BASE_INIT_CKPT=str(ckpt), LABELS_DIR=str(labels),
               SAVE_ROOT=str(tmp_path / 'results'), PYTHON=sys.executable)
    result = subprocess.run(['bash', os.path.join(REPO, 'slda_imagenet.sh'), '--class_increment', '2',
                             '--image_size', '32', '--num_workers', '0', '--no-progress'],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    plastic = json.loads((tmp_path / 'results' / 'slda_imagenet_plastic' / 'config.json').read_text())
    fixed = json.loads((tmp_path / 'results' / 'slda_imagenet_fixed' / 'config.json').read_text())
    assert (setting(plastic, 'cache_check'), setting(fixed, 'cache_check')) == ('sizes', 'listing')
    fixed_summary = json.loads((tmp_path / 'results' / 'slda_imagenet_fixed' / 'summary.json').read_text())
    assert setting(plastic, 'plastic_covariance') is True
    assert plastic['class_order'] == np.argsort(STREAM_POSITION).tolist()
    assert fixed_summary['finished'] and fixed_summary['images_extracted_this_process'] == 0
    cache = tmp_path / 'results' / 'feature_cache'
    [key] = sorted(set(os.listdir(cache)) - {'listings'})
    assert len(os.listdir(cache / 'listings')) == 1           # kept by the fixed run's --cache_check listing
    for split in ('train', 'val'):
        assert sorted(os.listdir(cache / key / split)) == \
            [f'class_{k:05d}.pt' for k in range(len(SYNSETS))]
    unset = subprocess.run(['bash', os.path.join(REPO, 'slda_imagenet.sh')], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != 'IMAGENET_DIR'}, timeout=60)
    assert unset.returncode == 2 and 'IMAGENET_DIR is not set' in unset.stderr and 'usage:' in unset.stderr
