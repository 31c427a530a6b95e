"""Small CIFAR-100 and CIFAR-10 folders in the official "python version" layout, for the tests of cifar.py: the
files' names and entries as the releases have them, pickled as Python 2's cPickle wrote them (protocol 2, strings as
Python 2 str, arrays as numpy.core.multiarray._reconstruct), random pixels."""
import struct

import numpy as np

CIFAR100_TRAIN_PER_CLASS = 2
CIFAR100_TEST_PER_CLASS = 1


def python2_pickle(value):
    """The bytes Python 2's cPickle.dump(value, protocol=2) writes for ``value``: a dict, list, bytes (Python 2's
    str), int or 2-D uint8 array, nested."""
    out = bytearray(b'\x80\x02')

    def put(item):
        if isinstance(item, dict):
            out.extend(b'}(')
            for key, element in item.items():
                put(key)
                put(element)
            out.extend(b'u')
        elif isinstance(item, list):
            out.extend(b'](')
            for element in item:
                put(element)
            out.extend(b'e')
        elif isinstance(item, bytes):
            out.extend((b'U' + bytes([len(item)]) if len(item) < 256 else b'T' + struct.pack('<i', len(item))) + item)
        elif isinstance(item, int):
            out.extend(b'J' + struct.pack('<i', item))
        else:       # a C-contiguous 2-D uint8 array, as NumPy's __reduce__ pickles it
            rows, columns = item.shape
            out.extend(b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R(K\x01')
            out.extend(b'J' + struct.pack('<i', rows) + b'J' + struct.pack('<i', columns) + b'\x86')
            out.extend(b'cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb')
            pixels = item.tobytes()
            out.extend(b'\x89T' + struct.pack('<i', len(pixels)) + pixels + b'tb')

    put(value)
    out.extend(b'.')
    return bytes(out)


def batch(labels, key, rng, name):
    """A data file's dict: ``labels`` under ``key``, random 32x32 images, file names and the batch label."""
    return {b'batch_label': name.encode(), key: [int(label) for label in labels],
            b'data': rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8),
            b'filenames': [f'image_{i:05d}.png'.encode() for i in range(len(labels))]}


def build_cifar100(root, seed=0):
    """``root``/cifar-100-python with train, test and meta: 100 classes, CIFAR100_TRAIN_PER_CLASS training and
    CIFAR100_TEST_PER_CLASS test images each, classes interleaved as in the release. Returns (the folder,
    {split: labels in file order})."""
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-100-python'
    folder.mkdir(parents=True)
    labels = {}
    for split, per_class in (('train', CIFAR100_TRAIN_PER_CLASS), ('test', CIFAR100_TEST_PER_CLASS)):
        labels[split] = rng.permutation(np.repeat(np.arange(100), per_class))
        content = batch(labels[split], b'fine_labels', rng, f'{split}ing batch 1 of 1')
        content[b'coarse_labels'] = [int(label) // 5 for label in labels[split]]
        (folder / split).write_bytes(python2_pickle(content))
    (folder / 'meta').write_bytes(python2_pickle({b'fine_label_names': [f'class_{k:02d}'.encode() for k in range(100)],
                                                  b'coarse_label_names': [f'super_{k}'.encode() for k in range(20)]}))
    return folder, labels


def build_cifar10(root, seed=1):
    """``root``/cifar-10-batches-py with data_batch_1 ... data_batch_5, test_batch and batches.meta: 10 classes,
    one training image of each per data batch, two test images each. Returns (the folder, {split: labels in file
    order, the data batches one after the other})."""
    rng = np.random.default_rng(seed)
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        train.append(rng.permutation(10))
        (folder / f'data_batch_{i}').write_bytes(python2_pickle(batch(train[-1], b'labels', rng,
                                                                      f'training batch {i} of 5')))
    test = rng.permutation(np.repeat(np.arange(10), 2))
    (folder / 'test_batch').write_bytes(python2_pickle(batch(test, b'labels', rng, 'testing batch 1 of 1')))
    (folder / 'batches.meta').write_bytes(python2_pickle({b'num_cases_per_batch': 10, b'num_vis': 3072,
                                                          b'label_names': [name.encode() for name in NAMES10]}))
    return folder, {'train': np.concatenate(train), 'test': test}


NAMES10 = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
