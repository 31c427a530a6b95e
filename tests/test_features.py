"""Tests of features.py: the feature extractor, its checkpoints, images and decoding workers.

features.py: the feature extractor's network (checkpoints and their key prefixes, partial checkpoints, torchvision
weights from the local cache only, the input size and feature size it takes), reading images for it (bad images
stop the run naming them, or are skipped and listed), non-finite features, and its decoding workers."""
import json
import os
import re
import signal
import threading

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import get_worker_info

import config
import data
from conftest import (SYNSETS, assert_one_line_error, build_image_folder, folder_args, folder_run, imagenet_argv,
                      make_checkpoint, run, truncate)
from features import DecodingWorkerError, Extraction, FeatureExtractor, load_checkpoint_into
from options import SettingError
from retrieve_any_layer import ModelWrapper

TREE_SMALL = ['--class_increment', 2, '--image_size', 32, '--num_workers', 0]


def reported_names(report):
    """{label: [tensor names]} of a load_checkpoint_into report ('...; shape differs: a, b; missing: c')."""
    return {label: names.split(', ') for label, names in re.findall(r'; ([a-z ]+): ([^;]+)', report)}


def test_checkpoint_of_a_compiled_model_loads_like_one_of_a_data_parallel_model(tmp_path):
    saved = make_checkpoint(tmp_path / 'compiled.pth', prefix='_orig_mod.', num_classes=1000)
    model = torchvision.models.resnet18()
    report, lacking = load_checkpoint_into(model, tmp_path / 'compiled.pth', required=set(model.state_dict()))
    assert lacking == []
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert report.startswith(f'loaded {len(saved.state_dict())} of {len(saved.state_dict())} tensors')


def test_a_tensor_of_another_shape_is_reported_once(tmp_path):
    saved = make_checkpoint(tmp_path / 'base.pth', num_classes=100)     # the original's layout: a 100-way fc
    model = torchvision.models.resnet18()
    report, _ = load_checkpoint_into(model, tmp_path / 'base.pth', required={'conv1.weight'})
    names = reported_names(report)
    assert names == {'shape differs': ['fc.bias', 'fc.weight']}, report
    assert torch.equal(model.conv1.weight, saved.conv1.weight)


def test_tensors_absent_from_the_checkpoint_are_reported_missing(tmp_path):
    saved = torchvision.models.resnet18()
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith('fc.')}
    torch.save({'model_state': state}, tmp_path / 'headless.pth')
    report, _ = load_checkpoint_into(torchvision.models.resnet18(), tmp_path / 'headless.pth')
    assert reported_names(report) == {'missing': ['fc.bias', 'fc.weight']}, report


def test_decoding_workers_default_to_the_cpus_this_process_may_use_for_a_gpu(tmp_path, monkeypatch):
    root, _ = build_image_folder(tmp_path)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0}, raising=False)   # pinned to one CPU ...
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)                                # ... of a larger machine
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    built = config.make_config(dataset='imagefolder', images_dir=str(root), save_dir=str(tmp_path / 'out'))
    assert (built.run.device, built.run.num_workers) == ('cuda', 1)


def test_on_the_cpu_images_are_decoded_in_the_main_process_by_default(tmp_path):
    root, _ = build_image_folder(tmp_path)
    built = config.make_config(dataset='imagefolder', images_dir=str(root), save_dir=str(tmp_path / 'out'),
                               device='cpu')
    assert built.run.num_workers == 0


class MeetingImages(data.TensorImages):
    """Images whose reading waits until ``threads`` threads read at once (a broken barrier raises)."""

    def __init__(self, threads):
        images = torch.rand(6, 3, SMALL_INPUT, SMALL_INPUT, generator=torch.Generator().manual_seed(0))
        super().__init__(images, np.array([0, 0, 0, 1, 1, 1]), 'meeting')
        self.barrier = threading.Barrier(threads, timeout=10)
        self.threads = set()

    def __getitem__(self, index):
        self.barrier.wait()
        self.threads.add(threading.get_ident())
        return super().__getitem__(index)


@pytest.mark.filterwarnings('ignore:no checkpoint and no pretrained --weights')
def test_without_workers_a_batch_is_decoded_on_as_many_threads_as_torch_uses(monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 2)
    images = MeetingImages(threads=2)
    extractor = FeatureExtractor(weights='none', amp=False, preprocessing=data.Preprocessing(SMALL_INPUT, SMALL_INPUT))
    extraction = Extraction(extractor, batch_size=4, num_workers=0, progress=False)
    extracted = {label: features for label, features, _, _ in extraction.classes(images, [0, 1], 'meeting', list)}
    assert len(images.threads) == 2
    direct = extractor(images.images[:4]), extractor(images.images[4:])    # the same batches
    assert torch.equal(torch.cat([extracted[0], extracted[1]]), torch.cat(direct))


SMALL_INPUT = 32


@pytest.mark.parametrize('arch, layer', [('vit_b_16', 'encoder'), ('inception_v3', 'Mixed_7c')])
def test_a_network_that_cannot_take_the_input_size_is_one_line_naming_arch_and_image_size(
        tmp_path, capsys, arch, layer):
    root, _ = build_image_folder(tmp_path)
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / 'out',
                     '--arch', arch, '--extract_layer', layer, '--image_size', SMALL_INPUT, '--num_workers', 0,
                     '--class_increment', 3], capsys)
    lines = out.err.strip().splitlines()
    assert code == SettingError.exit_code and len(lines) == 1 and lines[0].startswith('error: '), out.err
    assert f'--arch {arch}' in lines[0] and f'{SMALL_INPUT}x{SMALL_INPUT}' in lines[0], lines[0]
    assert '--image_size' in lines[0], lines[0]
    assert not (tmp_path / 'out' / 'summary.json').exists()       # refused before any batch


@pytest.mark.filterwarnings('ignore:no checkpoint and no pretrained --weights')
@pytest.mark.parametrize('with_checkpoint', [True, False])
def test_a_refused_input_size_is_refused_at_every_load(tmp_path, with_checkpoint):
    checkpoint = None
    if with_checkpoint:     # its dummy pass, which finds the tensors the layer needs, comes first
        checkpoint = str(tmp_path / 'squeezenet.pth')
        torch.save({'state_dict': torchvision.models.squeezenet1_0().state_dict()}, checkpoint)
    extractor = FeatureExtractor('squeezenet1_0', 'features.12', checkpoint=checkpoint, amp=False,
                                 preprocessing=data.Preprocessing().at_size(16))
    for _ in range(2):      # a notebook may try again: the refused network is not kept
        with pytest.raises(SettingError) as refused:
            extractor.load()
        assert refused.value.setting == 'arch'
        assert '--arch squeezenet1_0' in str(refused.value) and '16x16' in str(refused.value)


def test_checkpoint_with_prefixed_keys_gives_the_checkpoint_network(tmp_path):
    ckpt = tmp_path / 'prefixed.pth'
    reference = make_checkpoint(ckpt, prefix='module.model.', wrap='model_state', num_classes=100).eval()
    extractor = FeatureExtractor('resnet18', 'layer4.1', checkpoint=str(ckpt), device='cpu', amp=False,
                                 preprocessing=data.Preprocessing().at_size(32)).load()
    assert extractor.weights_report.startswith(f'loaded {len(reference.state_dict()) - 2} of ')
    images = torch.rand(2, 3, 32, 32)
    wrapper = ModelWrapper(reference, ['layer4.1'], return_single=True)
    with torch.no_grad():
        expected = wrapper(data.normalize(images)).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(images), expected, rtol=1e-4, atol=1e-5)


def tree_args(root, labels, ckpt, save):
    """The tree as ImageNet with its label files, or as an image folder in sorted class order without them."""
    order = ['--dataset', 'imagenet', '--labels_dir', labels] if labels else ['--dataset', 'imagefolder']
    return order + ['--images_dir', root, '--base_init_ckpt', ckpt, '--streaming_update_sigma', '--save_dir',
                    save] + TREE_SMALL


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


def test_torchvision_weights_come_only_from_the_local_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    expected = tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'
    argv = ['--num_classes', 4, '--weights', 'IMAGENET1K_V1', '--save_dir', tmp_path / 'out']
    code, out = run(argv, capsys)
    assert code == 2 and f'expected {expected}' in out.err and 'never downloads' in out.err
    expected.parent.mkdir(parents=True)
    torch.manual_seed(11)
    model = torchvision.models.resnet18().eval()
    torch.save(model.state_dict(), expected)
    extractor = FeatureExtractor('resnet18', 'layer4.1', weights='IMAGENET1K_V1', device='cpu', amp=False,
                                 preprocessing=data.Preprocessing().at_size(32))
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        reference = ModelWrapper(model, ['layer4.1'], return_single=True)(data.normalize(images)).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(images), reference)
    code, out = run(argv[:-1] + [tmp_path / 'out2', '--weights', 'NOT_A_WEIGHT_SET'], capsys)
    assert_one_line_error(code, out, 'weights NOT_A_WEIGHT_SET', 'resnet18')


def test_input_feature_size_is_checked_against_the_network(tmp_path, capsys):
    code, out = run(['--input_feature_size', 256, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--input_feature_size 256', 'resnet18 layer4.1', '512')
    code, out = run(['--num_classes', 4, '--input_feature_size', 256, '--extract_layer', 'layer3.1',
                     '--save_dir', tmp_path / 'layer3'], capsys)
    assert code == 0, out.err
    assert torch.load(tmp_path / 'layer3' / 'slda_model_weights_final.pth', weights_only=True)['muK'].shape == (10, 256)


def test_an_arch_that_is_no_torchvision_model_is_one_line_naming_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    code, out = run(folder_run(root, tmp_path, '--weights', 'IMAGENET1K_V1', '--arch', 'resnet19'), capsys)
    assert_one_line_error(code, out, 'arch resnet19')


def test_an_unreadable_image_is_one_line_naming_it(tmp_path, image_folder, capsys):
    root, labels = image_folder
    (root / 'train' / 'n01000003' / 'n01000003_0001.JPEG').write_bytes(b'not a jpeg at all')
    code, out = run(imagenet_argv(tmp_path, root, labels), capsys)
    assert_one_line_error(code, out, str(root / 'train' / 'n01000003' / 'n01000003_0001.JPEG'))


def test_truncated_jpeg_stops_the_run_naming_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    truncate(bad)
    code, out = run(folder_args(root, tmp_path, '--save_dir', tmp_path / 'out'), capsys)
    assert code == 2 and f'cannot read image {bad}' in out.err and '--skip_bad_images' in out.err
    # the increments finished before the bad image are kept
    assert (tmp_path / 'out' / 'slda_model_weights_min_trained_0_max_trained_2.pth').exists()


def test_skip_bad_images_skips_counts_and_lists_them(tmp_path, image_folder, capsys):
    root, _ = image_folder
    bad_train = root / 'train' / 'n01000004' / 'n01000004_0001.JPEG'
    bad_val = root / 'val' / 'n01000001' / 'n01000001_0000.JPEG'
    truncate(bad_train)
    bad_val.write_bytes(b'')
    code, out = run(folder_args(root, tmp_path, '--save_dir', tmp_path / 'out', '--skip_bad_images'), capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert sorted(summary['skipped_images']) == sorted([str(bad_train), str(bad_val)])
    weights = torch.load(tmp_path / 'out' / 'slda_model_weights_final.pth', weights_only=True)
    assert weights['cK'][3] == 2                      # class n01000004 had 3 training images, one unreadable
    assert summary['increments'][-1]['test_images'] == 10 - 1


@pytest.mark.parametrize('decode_on_device', [False, True])
def test_a_batch_of_only_bad_images_is_skipped(tmp_path, image_folder, capsys, decode_on_device):
    root, _ = image_folder
    bad = root / 'train' / SYNSETS[1] / f'{SYNSETS[1]}_0003.JPEG'      # the class's last image: a batch of its own
    bad.write_bytes(b'not an image')
    extra = ['--skip_bad_images', '--batch_size', 1] + (['--decode_on_device'] if decode_on_device else [])
    code, out = run(folder_run(root, tmp_path, *extra), capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['skipped_images'] == [str(bad)]


def test_every_image_of_a_class_unreadable_names_the_class_folder(tmp_path, image_folder, capsys):
    root, _ = image_folder
    for path in (root / 'train' / SYNSETS[3]).iterdir():
        path.write_bytes(b'broken')
    code, out = run(folder_run(root, tmp_path, '--skip_bad_images'), capsys)
    assert_one_line_error(code, out, f'every image of class {SYNSETS[3]} in train is unreadable',
                          str(root / 'train' / SYNSETS[3]))


def test_non_finite_features_name_the_batch(tmp_path, image_folder, capsys):
    root, _ = image_folder
    ckpt = tmp_path / 'nan.pth'
    model = make_checkpoint(ckpt)
    state = model.state_dict()
    state['layer4.1.bn2.weight'][0] = float('nan')
    torch.save({'state_dict': state}, ckpt)
    argv = folder_args(root, tmp_path, '--save_dir', tmp_path / 'out')
    argv[argv.index('--base_init_ckpt') + 1] = ckpt
    code, out = run(argv, capsys)
    assert code == 2
    assert 'NaN or infinite features for the batch starting at image' in out.err
    assert str(root / 'train' / 'n01000001' / 'n01000001_0000.JPEG') in out.err


# The decoding workers: the DataLoader's, forked from this process, so a patched ImageList.__getitem__ runs in them.


def worker_run(image_folder, tmp_path):
    root, labels = image_folder
    make_checkpoint(tmp_path / 'base.pth')
    return ['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels,
            '--base_init_ckpt', tmp_path / 'base.pth', '--class_increment', 2, '--image_size', 32,
            '--num_workers', 1, '--batch_size', 4, '--save_dir', tmp_path / 'out', '--device', 'cpu']


def in_workers(monkeypatch, fault):
    """Make every image read in a DataLoader worker call ``fault`` first."""
    read = data.ImageList.__getitem__

    def getitem(self, index):
        if get_worker_info() is not None:
            fault()
        return read(self, index)
    monkeypatch.setattr(data.ImageList, '__getitem__', getitem)


def killed():
    os.kill(os.getpid(), signal.SIGKILL)        # as the kernel's out-of-memory killer does


def bus_error():
    os.kill(os.getpid(), signal.SIGBUS)         # as touching a page of a full /dev/shm does


def no_room_in_shm():
    # what torch raises in a worker when /dev/shm cannot hold a batch
    raise RuntimeError('unable to allocate shared memory(shm) for file </torch_1_2_3>: No space left on device (28)')


# torch reports a dead worker with its signal, or only as gone when it notices first through the worker's
# queue; the line then names both likely causes
@pytest.mark.parametrize('fault, fragments', [
    (killed, ['decoding worker died', 'memory runs out', '--num_workers 0']),
    (bus_error, ['decoding worker', '/dev/shm', '--num_workers 0']),
    (no_room_in_shm, ['decoding workers ran out of shared memory', '/dev/shm', '--num_workers 0'])])
def test_a_decoding_worker_killed_or_out_of_shared_memory_gives_one_line(tmp_path, image_folder, capsys, monkeypatch,
                                                                        fault, fragments):
    in_workers(monkeypatch, fault)
    code, out = run(worker_run(image_folder, tmp_path), capsys)
    lines = out.err.strip().splitlines()
    assert code == DecodingWorkerError.exit_code and len(lines) == 1 and 'Traceback' not in out.err, out.err
    assert lines[0].startswith('error: ')
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_another_error_in_a_decoding_worker_keeps_its_traceback(tmp_path, image_folder, monkeypatch):
    def bug():
        raise RuntimeError('a bug in the dataset')
    in_workers(monkeypatch, bug)
    with pytest.raises(RuntimeError, match='a bug in the dataset') as raised:
        run(worker_run(image_folder, tmp_path))
    assert not isinstance(raised.value, DecodingWorkerError)
