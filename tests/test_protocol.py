"""What the plan builders say about a plan that may not be what was meant: iid and instance batches as large
as the training set make a stream of one batch."""
from types import SimpleNamespace

import numpy as np
import pytest

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
