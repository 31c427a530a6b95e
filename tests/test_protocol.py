"""Tests of protocol.py: class orders, the orderings' plans, protocol arguments.

protocol.py: the class order (label files, a seeded permutation), the orderings' plans and what they warn of,
and the protocol arguments they refuse."""
import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import protocol
from conftest import (SMALL, STREAM_POSITION, SYNSETS, TRAIN_PER_CLASS, VAL_PER_CLASS, assert_one_line_error,
                      imagenet_argv, make_checkpoint, run)
from protocol import ORDERINGS


TRAIN_IMAGES = 12


def splits_of(images):
    """The part of a data.SplitPair the plans read: training labels (2 classes) and clips (3 frames each)."""
    train = SimpleNamespace(labels=np.repeat([0, 1], images // 2), clips=np.arange(images) // 3)
    return SimpleNamespace(train=train, test=SimpleNamespace(labels=np.array([0, 1])), num_classes=2)


def plan_and_warning(ordering, **options):
    entry = ORDERINGS[ordering]
    options, splits = entry.options(**options), splits_of(TRAIN_IMAGES)
    return entry.plan(options, splits, False, None, 0), entry.plan_warning(options, splits)


@pytest.mark.parametrize('ordering', ['iid', 'instance'])
@pytest.mark.parametrize('images_per_batch', [TRAIN_IMAGES, TRAIN_IMAGES + 1])
def test_image_batches_of_the_whole_training_set_are_one_batch_with_a_warning(ordering, images_per_batch):
    plan, warning = plan_and_warning(ordering, images_per_batch=images_per_batch)
    assert len(plan) == 1
    assert f'--images_per_batch {images_per_batch}' in warning and f'{TRAIN_IMAGES} training images' in warning


@pytest.mark.parametrize('ordering', ['iid', 'instance'])
def test_smaller_image_batches_have_no_warning(ordering):
    plan, warning = plan_and_warning(ordering, images_per_batch=TRAIN_IMAGES - 1)
    assert len(plan) == 2 and warning is None


@pytest.mark.parametrize('ordering', ['class_incremental', 'class_iid', 'class_instance'])
def test_class_orderings_have_no_image_batch_warning(ordering):
    entry = ORDERINGS[ordering]
    assert entry.plan_warning(entry.options(classes_per_batch=1), splits_of(TRAIN_IMAGES)) is None


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


@pytest.mark.parametrize('content,fragment', [
    ('npz', 'is not a .npy array'), ('text', 'is not a .npy array'),
])
def test_a_label_file_that_is_not_npy_gives_one_line(tmp_path, image_folder, capsys, content, fragment):
    root, labels = image_folder
    path = labels / 'imagenet_train_labels.npy'
    if content == 'npz':
        with open(path, 'wb') as f:
            np.savez(f, labels=np.zeros(3))
    else:
        path.write_text('3 0 5 1 4 2\n')
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels, '--base_init_ckpt', ckpt,
                     '--save_dir', tmp_path / 'out'] + SMALL, capsys)
    assert_one_line_error(code, out, str(path), fragment)


@pytest.mark.parametrize('what', ['a file', 'a folder under a file', 'a folder named as the file'])
def test_labels_dir_naming_a_file_or_an_unreadable_label_file_gives_one_line(tmp_path, image_folder, capsys, what):
    root, labels = image_folder
    ckpt = tmp_path / 'base.pth'
    make_checkpoint(ckpt)
    if what == 'a file':
        labels_dir, fragments = labels / 'imagenet_train_labels.npy', ['is a file, not a folder',
                                                                        'imagenet_train_labels.npy and']
    elif what == 'a folder under a file':
        labels_dir = labels / 'imagenet_train_labels.npy' / 'labels'
        fragments = [f'--labels_dir {labels_dir} cannot hold imagenet_train_labels.npy', 'is a file, not a folder']
    else:
        labels_dir = tmp_path / 'other_labels'
        (labels_dir / 'imagenet_train_labels.npy').mkdir(parents=True)
        fragments = [str(labels_dir / 'imagenet_train_labels.npy'), 'cannot be read: Is a directory']
    code, out = run(['--dataset', 'imagenet', '--images_dir', root, '--labels_dir', labels_dir, '--base_init_ckpt',
                     ckpt, '--save_dir', tmp_path / 'out'] + SMALL, capsys)
    assert_one_line_error(code, out, *fragments)


def test_an_increment_larger_than_the_classes_is_one_line_naming_its_flag(tmp_path, image_folder, capsys):
    root, labels = image_folder
    argv = imagenet_argv(tmp_path, root, labels)
    argv[argv.index('--class_increment') + 1] = 7
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, '(--class_increment) 7', '6 classes')
    assert re.search(r'\(--class_increment\) 7 is larger than the 6 classes streamed \(the dataset has 6\); give at most 6', out.err), \
        out.err


def test_a_label_file_that_is_no_permutation_is_one_line_naming_it(tmp_path, image_folder, capsys):
    root, labels = image_folder
    np.save(labels / 'imagenet_train_labels.npy', np.zeros(sum(TRAIN_PER_CLASS), dtype=np.int64))
    code, out = run(imagenet_argv(tmp_path, root, labels), capsys)
    assert_one_line_error(code, out, str(labels / 'imagenet_train_labels.npy'))
    assert 'imagenet_train_labels.npy is not a permutation' in out.err           # its wording


def test_more_classes_than_the_dataset_has_fail_before_work(tmp_path, capsys):
    code, out = run(['--num_classes', 11, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--num_classes 11', '10 classes')
    assert not (tmp_path / 'out').exists()
