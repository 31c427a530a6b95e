"""The streaming experiment end to end: digits default, an ImageFolder stream with the original's label files,
output files and formats, checkpoints, and bad input."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import data
import experiment
from conftest import (REPO, STREAM_POSITION, SYNSETS, TRAIN_PER_CLASS, VAL_PER_CLASS, age_folders, make_checkpoint,
                      run, setting, write_jpeg)
from features import FeatureExtractor
from retrieve_any_layer import ModelWrapper
from slda_model import StreamingLDA
from utils import topk_accuracy


def increment_files(seen):
    name = f'min_trained_0_max_trained_{seen}'
    return {f'preds_{name}.pt', f'accuracies_{name}.json', f'slda_model_weights_{name}.pth'}


def test_digits_reduced_configuration(tmp_path, capsys):
    save = tmp_path / 'out'
    cache = tmp_path / 'cache'
    code, out = run(['--num_classes', 6, '--class_increment', 3, '--save_dir', save, '--feature_cache', cache],
                    capsys)
    assert code == 0, out.err
    expected = increment_files(3) | increment_files(6) | {
        'slda_model_weights_final.pth', 'config.json', 'summary.json', 'stream_order.txt', '.lock',
        'digits_train_labels.npy', 'digits_val_labels.npy'}
    assert set(os.listdir(save)) == expected
    train_labels = np.load(save / 'digits_train_labels.npy')           # sorted class order: positions = labels
    expected_order = [f'{1 + label // 3}\t{index}' for index, label in enumerate(train_labels) if label < 6]
    assert (save / 'stream_order.txt').read_text().splitlines() == expected_order
    accuracies = json.loads((save / 'accuracies_min_trained_0_max_trained_6.json').read_text())
    assert set(accuracies) == {'seen_classes_top1', 'seen_classes_top5'}
    assert len(accuracies['seen_classes_top1']) == 2
    first = json.loads((save / 'accuracies_min_trained_0_max_trained_3.json').read_text())
    assert first['seen_classes_top1'] == accuracies['seen_classes_top1'][:1]
    probabilities = torch.load(save / 'preds_min_trained_0_max_trained_6.pt', weights_only=True)
    test_labels = np.load(save / 'digits_val_labels.npy')
    seen_labels = np.flatnonzero(test_labels < 6)              # sorted class order: positions = labels
    assert probabilities.shape == (len(seen_labels), 10)
    # the probabilities are the saved final model's, on the test features the run read from its cache
    test_features = torch.cat([torch.load(path, weights_only=True)['features'] for path in
                               sorted(glob.glob(str(cache / '*' / 'val' / 'class_*.pt')))])
    assert len(test_features) == len(seen_labels)
    final = StreamingLDA(512, 10, device='cpu')
    final.load_model(str(save), 'slda_model_weights_final')
    assert torch.equal(final.predict(test_features, return_probas=True), probabilities)
    scores = final.decision_function(test_features)        # top-k ranks scores: probabilities tie at 0
    top1, top5 = topk_accuracy(scores, test_labels[seen_labels])
    assert top1 == pytest.approx(100 * (scores.argmax(1).numpy() == test_labels[seen_labels]).mean())
    assert accuracies['seen_classes_top1'][-1] == top1 and accuracies['seen_classes_top5'][-1] == top5
    assert top1 > 90
    weights = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
    assert set(weights) == {'muK', 'cK', 'Sigma', 'num_updates'}
    assert weights['muK'].shape == (10, 512) and weights['Sigma'].shape == (512, 512)
    assert weights['cK'][6:].sum() == 0 and weights['num_updates'] == int(weights['cK'].sum())
    summary = json.loads((save / 'summary.json').read_text())
    assert summary['finished'] and [row['classes_seen'] for row in summary['increments']] == [3, 6]
    assert summary['final']['slda']['top1'] == top1 and summary['skipped_images'] == []
    config = json.loads((save / 'config.json').read_text())
    assert setting(config, 'classes_per_batch') == 3 and config['feature_dim'] == 512
    assert 'final top-1' in out.out


def test_digits_default_reaches_paper_like_accuracy(tmp_path, capsys):
    """The README's default run: plastic covariance, base init on 2 classes, 2 classes per increment."""
    code, out = run(['--save_dir', tmp_path / 'out'], capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert [row['classes_seen'] for row in summary['increments']] == [2, 4, 6, 8, 10]
    assert summary['final']['slda']['top1'] >= 93


def test_imagefolder_stream_follows_label_files(tmp_path, image_folder, capsys):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels, '--base_init_ckpt', ckpt,
                     '--class_increment', 2, '--image_size', 32, '--batch_size', 4, '--num_workers', 0,
                     '--save_dir', save], capsys)
    assert code == 0, out.err
    order = np.argsort(STREAM_POSITION)                       # ImageFolder class indices in stream order
    assert order.tolist() == [1, 3, 5, 0, 4, 2]
    for split in ('train', 'val'):
        np.testing.assert_array_equal(np.load(save / f'imagenet_{split}_labels.npy'),
                                      np.load(labels / f'imagenet_{split}_labels.npy'))
    val_labels = np.repeat(np.arange(len(SYNSETS)), VAL_PER_CLASS)
    for seen in (2, 4, 6):
        weights = torch.load(save / f'slda_model_weights_min_trained_0_max_trained_{seen}.pth', weights_only=True)
        expected_counts = np.zeros(len(SYNSETS))
        expected_counts[order[:seen]] = np.array(TRAIN_PER_CLASS)[order[:seen]]
        np.testing.assert_array_equal(weights['cK'].numpy(), expected_counts)
        preds = torch.load(save / f'preds_min_trained_0_max_trained_{seen}.pt', weights_only=True)
        assert preds.shape == (np.isin(val_labels, order[:seen]).sum(), len(SYNSETS))
    config = json.loads((save / 'config.json').read_text())
    assert config['class_order'] == order.tolist()
    assert 'shape differs: fc.bias, fc.weight' in config['weights']


def test_generated_class_order_is_seeded_and_saved(tmp_path, image_folder, capsys):
    root, _ = image_folder
    save = tmp_path / 'out'
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--class_order_seed', 5,
                     '--class_increment', 3, '--image_size', 32, '--num_workers', 0, '--save_dir', save], capsys)
    assert code == 0, out.err
    expected = torch.randperm(6, generator=torch.Generator().manual_seed(5)).numpy()
    assert json.loads((save / 'config.json').read_text())['class_order'] == expected.tolist()
    positions = np.load(save / 'imagefolder_train_labels.npy')
    np.testing.assert_array_equal(np.argsort(positions[np.cumsum(TRAIN_PER_CLASS) - 1]), expected)
    # The saved files reproduce the order when given back.
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--labels_dir', save, '--class_increment', 3,
                     '--image_size', 32, '--num_workers', 0, '--save_dir', tmp_path / 'again'], capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'again' / 'config.json').read_text())['class_order'] == expected.tolist()


def test_checkpoint_with_prefixed_keys_gives_the_checkpoint_network(tmp_path):
    ckpt = tmp_path / 'prefixed.pth'
    reference = make_checkpoint(ckpt, prefix='module.model.', wrap='model_state', num_classes=100).eval()
    extractor = FeatureExtractor('resnet18', 'layer4.1', checkpoint=str(ckpt), device='cpu', amp=False,
                                 input_size=32).load()
    assert extractor.weights_report.startswith(f'loaded {len(reference.state_dict()) - 2} of ')
    images = torch.randn(2, 3, 32, 32)
    wrapper = ModelWrapper(reference, ['layer4.1'], return_single=True)
    with torch.no_grad():
        expected = wrapper(images).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(images), expected, rtol=1e-4, atol=1e-5)


def test_retrieve_any_layer_returns_named_outputs_and_removes_hooks():
    model = torchvision.models.resnet18().eval()
    wrapper = ModelWrapper(model, ['layer3', 'layer4.1'])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        layer3, layer4 = wrapper(images)
        expected = model.layer4(layer3)
    assert layer3.shape == (1, 256, 4, 4)
    torch.testing.assert_close(layer4, expected)
    wrapper.remove_hooks()
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"unknown layer name 'layer4.2' .*nearest: .*layer4\.1"):
        ModelWrapper(model, ['layer4.2'])


@pytest.mark.parametrize('case,message', [
    ('missing folder', 'does not exist or is not a folder'),
    ('empty class', r'class folder\(s\) with no images in .*val: n01000002'),
    ('unreadable image', 'cannot read image .*n01000003_0001.JPEG'),
    ('unknown layer', "unknown layer name 'layer9'"),
    ('increment too large', r'\(--class_increment\) 7 is larger than the 6 classes streamed'),
    ('bad label file', 'imagenet_train_labels.npy is not a permutation'),
    ('missing checkpoint', '--base_init_ckpt .*nothing.pth not found.*image_files/README.md'),
])
def test_bad_input_exits_with_clear_message(tmp_path, image_folder, capsys, case, message):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    argv = ['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels, '--base_init_ckpt', ckpt,
            '--class_increment', 2, '--image_size', 32, '--num_workers', 0, '--save_dir', tmp_path / 'out']
    if case == 'missing folder':
        argv[3] = tmp_path / 'nowhere'
    elif case == 'empty class':
        for f in (root / 'val' / 'n01000002').iterdir():
            f.unlink()
        del argv[argv.index('--labels_dir'):argv.index('--labels_dir') + 2]   # its lengths would differ
    elif case == 'unreadable image':
        (root / 'train' / 'n01000003' / 'n01000003_0001.JPEG').write_bytes(b'not a jpeg at all')
    elif case == 'unknown layer':
        argv += ['--extract_layer', 'layer9']
    elif case == 'increment too large':
        argv[argv.index('--class_increment') + 1] = 7
    elif case == 'bad label file':
        np.save(labels / 'imagenet_train_labels.npy', np.zeros(sum(TRAIN_PER_CLASS), dtype=np.int64))
    elif case == 'missing checkpoint':
        argv[argv.index('--base_init_ckpt') + 1] = tmp_path / 'nothing.pth'
    code, out = run(argv, capsys)
    assert code == 2
    assert out.err.startswith('error: ') and 'Traceback' not in out.err
    assert re.search(message, out.err), out.err


@pytest.mark.slow
def test_command_line_error_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, 'experiment.py'), '--dataset', 'imagefolder',
                             '--images_dir', str(tmp_path / 'missing'), '--save_dir', str(tmp_path / 'out')],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    assert f'--images_dir {tmp_path / "missing"} does not exist' in result.stderr


def test_existing_results_are_not_overwritten_without_resume(tmp_path, capsys):
    save = tmp_path / 'out'
    argv = ['--num_classes', 4, '--save_dir', save]
    assert run(argv, capsys)[0] == 0
    before = (save / 'slda_model_weights_final.pth').read_bytes()
    code, out = run(argv, capsys)
    assert code == 2 and 'pass --resume' in out.err
    assert (save / 'slda_model_weights_final.pth').read_bytes() == before


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
                                 input_size=32)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = ModelWrapper(model, ['layer4.1'], return_single=True)(images).mean(dim=(2, 3))
    torch.testing.assert_close(extractor(images), reference)
    code, out = run(argv[:-1] + [tmp_path / 'out2', '--weights', 'NOT_A_WEIGHT_SET'], capsys)
    assert code == 2 and 'NOT_A_WEIGHT_SET is not a weight set of resnet18' in out.err


def test_input_feature_size_is_checked_against_the_network(tmp_path, capsys):
    code, out = run(['--input_feature_size', 256, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 2 and '--input_feature_size 256 does not match the network: resnet18 layer4.1 gives 512' in out.err
    code, out = run(['--num_classes', 4, '--input_feature_size', 256, '--extract_layer', 'layer3.1',
                     '--save_dir', tmp_path / 'layer3'], capsys)
    assert code == 0, out.err
    assert torch.load(tmp_path / 'layer3' / 'slda_model_weights_final.pth', weights_only=True)['muK'].shape == (10, 256)


@pytest.mark.parametrize('unit,scale', [('fractions', 1), ('percent', 100)])
def test_omega_all_from_offline_accuracies(tmp_path, capsys, unit, scale):
    offline = tmp_path / 'offline.json'
    offline.write_text(json.dumps({'top1': [1.0 * scale, 0.8 * scale], 'top5': [1.0 * scale, 0.5 * scale]}))
    code, out = run(['--num_classes', 4, '--offline_accuracies', offline, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 0, out.err
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    rows = [row['heads']['slda'] for row in summary['increments']]      # our accuracies, in percent
    assert summary['accuracy_unit'] == 'percent' and rows[-1]['top1'] > 90
    assert summary['omega_all']['top1'] == pytest.approx((rows[0]['top1'] / 100 + rows[1]['top1'] / 80) / 2)
    assert summary['omega_all']['top5'] == pytest.approx((rows[0]['top5'] / 100 + rows[1]['top5'] / 50) / 2)
    offline.write_text(json.dumps({'top1': [1.0 * scale], 'top5': [1.0 * scale]}))
    code, out = run(['--num_classes', 4, '--offline_accuracies', offline, '--save_dir', tmp_path / 'bad'], capsys)
    assert code == 2 and '"top1" must list 2 accuracies' in out.err and 'percentages in (0, 100]' in out.err


def test_uint8_pipeline_equals_torchvision_to_tensor_and_normalize():
    from PIL import Image
    from torchvision import transforms
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                    transforms.Normalize(data.IMAGENET_MEAN, data.IMAGENET_STD)])(image)
    as_bytes = data.folder_transform(224)(image)
    assert as_bytes.dtype == torch.uint8 and as_bytes.shape == (3, 224, 224)
    assert torch.equal(data.imagenet_normalize(as_bytes.unsqueeze(0))[0], reference)


@pytest.mark.parametrize('save_preds,expected', [('final', {6}), ('none', set())])
def test_save_preds_and_float64_state(tmp_path, capsys, save_preds, expected):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 6, '--save_preds', save_preds, '--slda_dtype', 'float64', '--save_dir', save],
                    capsys)
    assert code == 0, out.err
    preds = {int(name.split('_')[-1][:-3]) for name in os.listdir(save) if name.startswith('preds_')}
    assert preds == expected
    assert torch.load(save / 'slda_model_weights_final.pth', weights_only=True)['Sigma'].dtype == torch.float64


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


def test_imagenet_without_checkpoint_explains_what_is_needed(tmp_path, image_folder, capsys):
    root, _ = image_folder
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 2
    assert os.path.join(REPO, 'image_files', 'imagenet_100_class_ckpt.pth') in out.err
    assert 'image_files/README.md' in out.err and '--weights' in out.err


def test_no_base_init_with_fixed_covariance_keeps_the_identity(tmp_path, capsys):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 4, '--no_base_init', '--no-streaming_update_sigma', '--save_dir', save], capsys)
    assert code == 0, out.err
    weights = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
    assert torch.equal(weights['Sigma'], torch.eye(512))
    summary = json.loads((save / 'summary.json').read_text())
    assert [row['classes_seen'] for row in summary['increments']] == [2, 4]
    assert weights['num_updates'] == sum(row['train_images'] for row in summary['increments'])
    code, out = run(['--no_base_init', '--base_init_classes', 2, '--save_dir', tmp_path / 'x'], capsys)
    assert code == 2 and 'contradict' in out.err


def test_listing_matches_torchvision_image_folder_order(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    root = tmp_path / 'split'
    layout = {'cat': ['b.JPEG', 'a.png', 'notes.txt', 'D.JPG', 'sub/z.jpeg', 'sub-x/y.jpeg', 'sub/deeper/w.jpeg',
                      'sub.d/v.JPEG'],
              'dog': ['only.webp'],
              'elsewhere': ['linked.jpg']}
    for folder, names in layout.items():
        for name in names:
            (root / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(b'')
    os.symlink(root / 'elsewhere', root / 'cat' / 'link')           # ImageFolder follows linked folders
    os.symlink(root / 'dog', root / 'cow')
    (root / 'stray.jpg').write_bytes(b'')
    classes, class_to_idx = find_classes(root)
    assert data.list_classes(root) == classes == ['cat', 'cow', 'dog', 'elsewhere']
    assert data.IMG_EXTENSIONS == IMG_EXTENSIONS
    samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    class_files, _ = data.list_split(str(root), classes, {})
    images = data.ImageList(str(root), classes, class_files, 32)
    ours = [images.describe(i) for i in range(len(images))]
    assert ours == [path for path, _ in samples] and images.labels.tolist() == [label for _, label in samples]
    assert os.path.join(root, 'cat', 'link', 'linked.jpg') in ours and not any(p.endswith('.txt') for p in ours)
    (root / 'dog' / 'two\nlines.jpg').write_bytes(b'')
    with pytest.raises(ValueError, match=r"two\\nlines.jpg'.*line break.*rename"):
        data.list_split(str(root), classes, {})


def test_saved_listing_is_reused_only_while_every_folder_of_a_class_is_unchanged(tmp_path):
    root = tmp_path / 'train'
    for relative in ('a/1.jpg', 'a/2.jpg', 'a/sub/3.jpg', 'b/4.jpg', 'b/5.jpg'):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b'')
    classes = ['a', 'b']
    hour = 3600 * 10 ** 9

    def later(hours):
        """A clock this many hours after the folders' latest change, as if that much time had passed."""
        return max(os.stat(folder).st_mtime_ns for folder, _, _ in os.walk(root)) + hours * hour

    def fresh():
        return ['\n'.join(data.list_image_files(os.path.join(root, name))[0]) for name in classes]

    def hide_change(folder, since):
        """Put ``folder``'s modification time back to what it was, so that only a kept listing misses a change."""
        os.utime(folder, ns=(since, since))

    files, listing = data.list_split(str(root), classes, {}, now_ns=later(1))
    assert files == fresh() and sorted(listing) == classes
    # a rename whose folder time is put back: a reused listing still shows the old name, a fresh one the new
    a_time = os.stat(root / 'a').st_mtime_ns
    os.rename(root / 'a' / '1.jpg', root / 'a' / '0.jpg')
    hide_change(root / 'a', a_time)
    again, _ = data.list_split(str(root), classes, listing, now_ns=later(1))
    assert again == files and '1.jpg' in again[0].split('\n')
    assert '0.jpg' in fresh()[0].split('\n')
    # a file added in a sub-folder, and one removed: both classes' folders changed, both listed again
    (root / 'a' / 'sub' / '6.jpg').write_bytes(b'')
    (root / 'b' / '4.jpg').unlink()
    files, listing = data.list_split(str(root), classes, listing, now_ns=later(0))
    assert files == fresh()
    assert os.path.join('sub', '6.jpg') in files[0].split('\n') and files[1] == '5.jpg'
    assert listing == {}                       # changed within the last seconds: not kept
    files, listing = data.list_split(str(root), classes, {}, now_ns=later(1))
    assert sorted(listing) == classes
    # a new sub-folder: its parent's time changes, so class b is listed again and a is still reused
    a_time = os.stat(root / 'a').st_mtime_ns
    os.rename(root / 'a' / '2.jpg', root / 'a' / '7.jpg')
    hide_change(root / 'a', a_time)
    (root / 'b' / 'new_folder').mkdir()
    (root / 'b' / 'new_folder' / '8.jpg').write_bytes(b'')
    files, _ = data.list_split(str(root), classes, listing, now_ns=later(1))
    assert files[1] == fresh()[1] and os.path.join('new_folder', '8.jpg') in files[1].split('\n')
    assert files[0] != fresh()[0] and '2.jpg' in files[0].split('\n')


def test_listing_file_of_image_folder_splits_is_reused_and_a_damaged_one_ignored(tmp_path, image_folder):
    root, _ = image_folder
    age_folders(root)
    listings = tmp_path / 'listings'
    first = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
    [name] = os.listdir(listings)
    saved = json.loads((listings / name).read_text())
    assert sorted(saved) == ['train', 'val'] and len(saved['train']) == len(SYNSETS)
    modified = (listings / name).stat().st_mtime_ns
    again = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
    assert again.train.class_files == first.train.class_files and again.test.class_files == first.test.class_files
    assert (listings / name).stat().st_mtime_ns == modified                 # unchanged, so not rewritten
    for damage in ('{"train": {"n01000001": [{}, 3]}}', 'not json', '[1, 2]'):
        (listings / name).write_text(damage)
        again = data.image_folder_splits('imagenet', str(root), listing_dir=str(listings))
        assert again.train.class_files == first.train.class_files and json.loads((listings / name).read_text()) == saved


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


def test_imagenet_without_label_files_warns_before_any_work_and_records_it(tmp_path, image_folder, capsys):
    root, _ = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    code, out = run(['--images_dir', root, '--base_init_ckpt', ckpt, '--class_increment', 2, '--image_size', 32,
                     '--num_workers', 0, '--save_dir', tmp_path / 'out', '--batch_size', 1000], capsys)
    assert code == 0, out.err
    assert out.err.startswith('WARNING: no label files (imagenet_train_labels.npy, imagenet_val_labels.npy)')
    assert 'not comparable to the paper' in out.err
    config = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert config['class_order_source'] == 'sorted' and config['class_order'] == list(range(len(SYNSETS)))
    assert config['class_order_warning'] in out.err


@pytest.mark.parametrize('argv,message', [
    (['--images_dir', '{root}', '--dataset', 'digits'], '--images_dir is for --dataset imagenet, imagefolder, core50; '
                                                        '--dataset digits does not use it'),
    (['--image_size', 64], '--image_size is for --dataset imagenet, imagefolder, core50; --dataset digits does not '
                           'use it'),
    (['--test_split', 'test'], '--test_split is for --dataset imagenet, imagefolder; --dataset digits does not use it'),
    (['--skip_bad_images'], '--skip_bad_images is for --dataset imagenet, imagefolder, core50; --dataset digits '
                            'does not use it'),
    (['--cache_check', 'listing'], '--cache_check is for --dataset imagenet, imagefolder, core50; --dataset digits '
                                   'does not use it'),
    (['--dataset', 'imagefolder', '--images_dir', '{root}', '--frame_stride', 10],
     '--frame_stride is for --dataset core50; --dataset imagefolder does not use it'),
    (['--ordering_seed', 3], '--ordering_seed is for --ordering iid, class_iid, instance, class_instance; '
                             '--ordering class_incremental does not use it'),
    (['--ordering', 'iid', '--shuffle_data'], '--shuffle_data is for --ordering class_incremental; --ordering iid does not use it'),
    (['--ordering', 'iid', '--class_increment', 2], 'classes_per_batch (--class_increment) is for --ordering '
                                                    'class_incremental, class_iid, class_instance; --ordering iid does not use it'),
    (['--ordering', 'class_iid', '--images_per_batch', 100], '--images_per_batch is for --ordering iid, instance; '
                                                             '--ordering class_iid does not use it'),
    (['--ordering', 'instance'], '--ordering instance needs a dataset that knows its clips (core50); --dataset '
                                 'digits does not'),
    (['--base_init', '--no_base_init'], '--base_init and --no_base_init contradict each other; give one'),
])
def test_a_flag_the_run_does_not_use_is_an_error(tmp_path, image_folder, capsys, argv, message):
    root, _ = image_folder
    code, out = run([str(a).format(root=root) for a in argv] + ['--save_dir', tmp_path / 'out'], capsys)
    assert code == 2 and out.err == f'error: {message}\n'
    assert not (tmp_path / 'out').exists()


def test_label_files_and_a_class_order_seed_are_a_conflict(tmp_path, image_folder, capsys):
    root, labels = image_folder
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--labels_dir', labels,
                     '--class_order_seed', 3, '--save_dir', tmp_path / 'out'], capsys)
    assert code == 2 and f'--class_order_seed 3 and --labels_dir {labels} both give a class order' in out.err


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


def interrupt_at(monkeypatch, nth):
    """Make the nth batch of the next run raise KeyboardInterrupt at its start, as Ctrl-C would."""
    seen = []

    def point(name):
        if name == 'increment_start':
            seen.append(name)
            if len(seen) == nth:
                raise KeyboardInterrupt
    monkeypatch.setattr(experiment, 'crash_point', point)


ALL_HEADS = ['--num_classes', 6, '--heads', 'slda,ncm,softmax_stream,offline']


def head_accuracies(save):
    rows = json.loads((save / 'summary.json').read_text())['increments']
    return [{name: (head['top1'], head['top5'], head['samples_seen']) for name, head in row['heads'].items()}
            for row in rows]


def test_an_interrupted_run_with_every_output_layer_resumes_to_the_uninterrupted_results(tmp_path, capsys,
                                                                                         monkeypatch):
    assert run(ALL_HEADS + ['--save_dir', tmp_path / 'whole'])[0] == 0
    interrupt_at(monkeypatch, 3)
    code, out = run(ALL_HEADS + ['--save_dir', tmp_path / 'stopped'], capsys)
    assert code == 130 and '2 finished batch(es) are saved, rerun with --resume' in out.err
    monkeypatch.undo()
    code, out = run(ALL_HEADS + ['--save_dir', tmp_path / 'stopped', '--resume'], capsys)
    assert code == 0 and 'resuming after increment 2/3' in out.out, out.err
    assert head_accuracies(tmp_path / 'stopped') == head_accuracies(tmp_path / 'whole')
    for name in ('heads_min_trained_0_max_trained_6.pth', 'slda_model_weights_final.pth'):
        assert (tmp_path / 'stopped' / name).read_bytes() == (tmp_path / 'whole' / name).read_bytes()


def test_a_run_stopped_before_any_batch_finished_starts_again_with_the_same_command(tmp_path, capsys, monkeypatch):
    argv = ['--num_classes', 4, '--save_dir', tmp_path / 'out']
    interrupt_at(monkeypatch, 1)
    code, out = run(argv, capsys)
    assert code == 130 and '--resume' not in out.err           # nothing finished: nothing to continue
    monkeypatch.undo()
    code, out = run(argv, capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'out' / 'summary.json').read_text())['finished']


def test_resuming_a_finished_run_leaves_it_as_it_is(tmp_path, capsys):
    argv = ['--num_classes', 4, '--save_dir', tmp_path / 'out']
    assert run(argv)[0] == 0
    before = {path.name: path.read_bytes() for path in (tmp_path / 'out').iterdir()}
    code, out = run(argv + ['--resume'], capsys)
    assert code == 0 and 'holds a finished run; it is left as it is' in out.err
    assert {path.name: path.read_bytes() for path in (tmp_path / 'out').iterdir()} == before


def test_an_unexpected_error_keeps_its_traceback_and_is_logged_in_the_save_folder(tmp_path, monkeypatch):
    def broken(scores, labels):
        raise ValueError('a bug deep in a library')
    monkeypatch.setattr(experiment, 'topk_accuracy', broken)
    with pytest.raises(ValueError, match='a bug deep in a library'):
        run(['--num_classes', 4, '--save_dir', tmp_path / 'out'])
    log = (tmp_path / 'out' / 'error.log').read_text()
    assert 'Traceback' in log and 'a bug deep in a library' in log


@pytest.mark.parametrize('layout', ['run_arguments_layout', 'run_fraction_layout'])
def test_resume_into_a_folder_of_an_earlier_release_is_refused_in_one_line(tmp_path, capsys, layout):
    save = tmp_path / 'old'
    shutil.copytree(os.path.join(REPO, 'tests', 'fixtures', layout), save)
    (save / 'slda_model_weights_min_trained_0_max_trained_2.pth').write_bytes(b'')   # a batch it finished
    before = (save / 'config.json').read_bytes()
    code, out = run(['--num_classes', 4, '--save_dir', save, '--resume'], capsys)
    assert code == 2 and out.err.count('\n') == 1 and 'written by another release' in out.err
    assert (save / 'config.json').read_bytes() == before
