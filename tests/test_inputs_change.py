"""Nothing silently wrong: runs that collide, inputs that change under a resume or a cache, partial
checkpoints, and skipped images across a resume."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import experiment
from conftest import REPO, SYNSETS, make_checkpoint, run

SMALL = ['--class_increment', 2, '--image_size', 32, '--num_workers', 0]


def tree_args(root, labels, ckpt, save):
    """The tree as ImageNet with its label files, or as an image folder in sorted class order without them."""
    order = ['--dataset', 'imagenet', '--labels_dir', labels] if labels else ['--dataset', 'imagefolder']
    return order + ['--images_dir', root, '--base_init_ckpt', ckpt, '--streaming_update_sigma', '--save_dir',
                    save] + SMALL


@pytest.mark.slow
def test_a_second_run_into_a_folder_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    save = tmp_path / 'out'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from results import ResultsFolder; '
         'from utils import BackgroundFiles; folder = ResultsFolder(sys.argv[1], BackgroundFiles()); '
         'folder.claim({}, resume=False); '
         'print("claimed", flush=True); time.sleep(120)', str(save)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'claimed'
        for extra in ([], ['--resume']):
            code, out = run(['--num_classes', 4, '--save_dir', save] + extra, capsys)
            assert code == 2 and f'{save} is in use by another run (process {holder.pid})' in out.err
        assert not (save / 'config.json').exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, out = run(['--num_classes', 4, '--save_dir', save], capsys)      # a killed holder leaves no stale lock
    assert code == 0, out.err


def finish_two_of_three(root, labels, ckpt, save, capsys):
    """A run of the tree that stopped after its second increment (its last increment's files removed)."""
    code, out = run(tree_args(root, labels, ckpt, save), capsys)
    assert code == 0, out.err
    for name in ('slda_model_weights_final.pth', 'slda_model_weights_min_trained_0_max_trained_6.pth'):
        os.remove(save / name)


@pytest.mark.parametrize('change,message', [
    ('label files', 'the class order differs from the saved run'),
    ('checkpoint', 'the network differs from the saved run'),
    ('training images', "the training stream differs from the saved run (stream_order.txt line 4: saved "
                        "'1\\ttrain/n01000002/n01000002_0000.JPEG', now '1\\ttrain/n01000002/n01000002_0001.JPEG')"),
    ('test images', 'the test images differ from the saved run'),
])
def test_resume_refuses_when_what_the_arguments_point_at_changed(tmp_path, image_folder, capsys, change, message):
    root, labels = image_folder
    if change in ('training images', 'test images'):
        labels = None                      # label files would no longer fit the images: another, clear error
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    save = tmp_path / 'out'
    finish_two_of_three(root, labels, ckpt, save, capsys)
    config_before = (save / 'config.json').read_text()
    if change == 'label files':
        for split in ('train', 'val'):
            values = np.load(labels / f'imagenet_{split}_labels.npy')
            np.save(labels / f'imagenet_{split}_labels.npy', np.where(values < 2, 1 - values, values))
    elif change == 'checkpoint':
        make_checkpoint(ckpt, seed=4)
    elif change == 'training images':
        os.remove(root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0000.JPEG')
    else:
        os.remove(root / 'val' / SYNSETS[0] / f'{SYNSETS[0]}_0000.JPEG')
    code, out = run(tree_args(root, labels, ckpt, save) + ['--resume'], capsys)
    assert code == 2 and message in out.err, out.err
    assert (save / 'config.json').read_text() == config_before
    assert not (save / 'slda_model_weights_final.pth').exists()


def test_resume_with_unchanged_inputs_continues(tmp_path, image_folder, capsys):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    finish_two_of_three(root, labels, ckpt, tmp_path / 'out', capsys)
    code, out = run(tree_args(root, labels, ckpt, tmp_path / 'out') + ['--resume'], capsys)
    assert code == 0 and 'resuming after increment 2/3' in out.out


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
                         '--save_dir', tmp_path / f'out_{root.name}'] + SMALL, capsys)
        assert code == 0, out.err
        summary = json.loads((tmp_path / f'out_{root.name}' / 'summary.json').read_text())
        assert summary['images_extracted_this_process'] == 8, root.name


@pytest.mark.parametrize('damage,tensors', [
    ('resnet50', 'layer1.0.conv1.weight'), ('no layer4', 'layer4.0.bn1.bias'),
    ('no batchnorm statistics', 'bn1.running_mean'),
])
def test_a_checkpoint_without_the_layers_the_features_come_from_is_refused(tmp_path, image_folder, capsys, damage,
                                                                           tensors):
    import torchvision
    root, labels = image_folder
    ckpt = tmp_path / 'partial.pth'
    if damage == 'resnet50':
        torch.save({'state_dict': torchvision.models.resnet50().state_dict()}, ckpt)
    else:
        state = make_checkpoint(tmp_path / 'full.pth').state_dict()
        drop = 'layer4.' if damage == 'no layer4' else 'running_'
        torch.save({'state_dict': {k: v for k, v in state.items() if drop not in k}}, ckpt)
    code, out = run(tree_args(root, labels, ckpt, tmp_path / 'out'), capsys)
    assert code == 2 and 'lacks tensors that layer4.1 depends on' in out.err and tensors in out.err, out.err
    assert '--allow_partial_checkpoint' in out.err
    code, out = run(tree_args(root, labels, ckpt, tmp_path / 'partial') + ['--allow_partial_checkpoint'], capsys)
    assert code == 0 and 'WARNING: partial checkpoint' in out.err
    config = json.loads((tmp_path / 'partial' / 'config.json').read_text())
    assert config['partial_checkpoint'] and tensors in config['partial_checkpoint']


def test_a_checkpoint_missing_only_the_classifier_loads(tmp_path, image_folder, capsys):
    root, labels = image_folder
    ckpt = tmp_path / 'no_fc.pth'
    state = make_checkpoint(tmp_path / 'full.pth').state_dict()
    torch.save({'state_dict': {k: v for k, v in state.items() if not k.startswith('fc.')}}, ckpt)
    code, out = run(tree_args(root, labels, ckpt, tmp_path / 'out'), capsys)
    assert code == 0 and 'WARNING' not in out.err


def test_skipped_images_survive_a_resume(tmp_path, image_folder, capsys, monkeypatch):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    bad = root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0001.JPEG'      # stream class 0: the first increment
    bad.write_bytes(bad.read_bytes()[:100])
    argv = tree_args(root, labels, ckpt, tmp_path / 'interrupted') + ['--skip_bad_images']

    def interrupt_before_the_second_increment(name):
        if name == 'increment_start' and (tmp_path / 'interrupted' / 'config.json').exists():
            interrupt_before_the_second_increment.hits += 1
            if interrupt_before_the_second_increment.hits == 2:
                raise KeyboardInterrupt

    interrupt_before_the_second_increment.hits = 0
    monkeypatch.setattr(experiment, 'crash_point', interrupt_before_the_second_increment)
    code, out = run(argv, capsys)
    assert code == 130 and 'rerun with --resume' in out.err
    assert (tmp_path / 'interrupted' / 'slda_model_weights_min_trained_0_max_trained_2.pth').exists()
    code, out = run(argv + ['--resume'], capsys)
    assert code == 0 and 'resuming after increment 1/3' in out.out
    code, _ = run(tree_args(root, labels, ckpt, tmp_path / 'whole') + ['--skip_bad_images'])
    assert code == 0
    summaries = [json.loads((tmp_path / name / 'summary.json').read_text()) for name in ('interrupted', 'whole')]
    assert summaries[0]['skipped_images'] == summaries[1]['skipped_images'] == [str(bad)]
