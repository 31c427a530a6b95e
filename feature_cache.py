"""The feature cache: pooled features of whole classes kept on disk across runs.

Layout under the cache's root folder:
    <key>/<split>/class_XXXXX.pt   one class of one split: features, the images' dataset indices, the indices of
                                   images that could not be read, and two fingerprints of the class's files
    listings/                      file listings of image folders kept between runs (see data.list_split)

The key covers everything besides the image files that changes features (network, layer, weights, autocast,
dataset and its folder's resolved path, transform, stored precision); the fingerprints cover the files, so an
edited class is computed again on its own. Files are replaced by renaming a finished temporary file, never
rewritten in place, so a reader (which memory-maps them) never sees half a file.
"""
import hashlib
import json
import os

import numpy as np
import torch

from errors import InputError
from utils import remove_stale_temporaries, safe_torch_load, save_tensor

# The most a feature row may change, relative to its norm, when stored in the cache's precision: float16 and
# bfloat16 round a normal value by at most 2^-11 and 2^-8 of it; far more means values too small for the format.
CACHE_ROUNDING_TOLERANCE = 0.01


def cache_key(extractor_identity, splits, dtype):
    """A short hash of everything besides the image files that changes cached features: the network, the
    dataset and its images folder (a class's fingerprint covers names and sizes, which two folders of
    fixed-size images can share), the transform, the stored precision."""
    text = json.dumps({'extractor': extractor_identity, 'dataset': splits.name, 'source': splits.source,
                       'transform': splits.transform_description, 'dtype': str(dtype)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def listings_folder(root):
    """Where file listings of image folders are kept, beside the features of cache ``root``."""
    return os.path.join(root, 'listings')


class FeatureCache:
    """The classes of cache ``root`` under ``key``, stored in ``dtype``.

    ``check_sizes`` says how a class file is matched to the class's image files: by names and sizes (True), or
    by names and folder modification times (False), as ``Split.class_fingerprint`` computes them.
    """

    def __init__(self, root, key, dtype=torch.float16, check_sizes=True, dim=None):
        self.folder = os.path.join(root, key)
        self.dtype = dtype
        self.check_sizes = check_sizes
        self.dim = dim          # the feature size when known: an entry of another width is not served
        self.class_sizes = {}   # split name -> images per class, to check that an entry covers its class

    def remove_leftovers(self, split_names):
        """Remove the temporary files that killed writers left in the folders of ``split_names``; those of runs
        still writing (into a cache shared with them) stay."""
        for split_name in split_names:
            remove_stale_temporaries(os.path.join(self.folder, split_name))

    def path(self, split_name, label):
        return os.path.join(self.folder, split_name, f'class_{label:05d}.pt')

    def read(self, split, split_name, label):
        """(features (n, d) as stored, dataset indices (n,), indices of unreadable images (list)) of class
        ``label``, or None when the cache has no file for it that this program would have written (see
        ``_well_formed``) or the class's files have changed."""
        path = self.path(split_name, label)
        if not os.path.exists(path):
            return None
        try:
            entry = safe_torch_load(path, mmap=True)
        except (OSError, ValueError):
            return None      # unreadable or unsafe: the class is extracted again and the file replaced
        if not self._well_formed(entry, split, split_name, label):
            return None
        stored = entry['fingerprint' if self.check_sizes else 'listing_fingerprint']
        if stored != split.class_fingerprint(label, sizes=self.check_sizes):
            return None
        return entry['features'], entry['indices'], entry['skipped'].tolist()

    def _well_formed(self, entry, split, split_name, label):
        """Whether a loaded class file holds what ``write`` writes for class ``label`` of ``split``: finite
        features in this cache's precision (of the known width), one row per readable image, and every image of
        the class once, readable ones in dataset order. Anything else is a damaged file, recomputed."""
        if not isinstance(entry, dict) or not all(isinstance(entry.get(key), str)
                                                  for key in ('fingerprint', 'listing_fingerprint')):
            return False
        features, indices, skipped = (entry.get(key) for key in ('features', 'indices', 'skipped'))
        if not (all(torch.is_tensor(t) for t in (features, indices, skipped)) and features.dtype == self.dtype
                and indices.dtype == skipped.dtype == torch.int64 and features.dim() == 2 and indices.dim() == 1
                and skipped.dim() == 1 and len(features) == len(indices)
                and (self.dim is None or features.shape[1] == self.dim)):
            return False
        if split_name not in self.class_sizes:
            self.class_sizes[split_name] = np.bincount(split.labels)
        images = torch.cat([indices, skipped])
        return (len(images) == self.class_sizes[split_name][label] and len(images) > 0
                and int(images.min()) >= 0 and int(images.max()) < len(split.labels)
                and bool((split.labels[images.numpy()] == label).all())
                and len(images.unique()) == len(images) and bool((indices[1:] > indices[:-1]).all())
                and bool(torch.isfinite(features).all()))

    def write(self, split, split_name, label, features, indices, skipped, files=None):
        """Store class ``label``: features (n, d), their dataset indices (n,), unreadable images' indices (k,).
        Written atomically, on the file thread of ``files`` (a utils.BackgroundFiles) when given. Returns the
        features as stored, which is what a later ``read`` returns. Raises ValueError, naming the file and
        ``--cache_dtype float32``, for features beyond the range of the cache's precision, or so small that a row
        changes by more than CACHE_ROUNDING_TOLERANCE of its norm when stored."""
        path = self.path(split_name, label)
        stored = features.to(self.dtype)
        if not torch.isfinite(stored).all():        # the extraction refuses non-finite features: these overflowed
            raise InputError(f'cannot cache {path}: features reach {float(features.abs().max()):.4g}, beyond the '
                             f'range of {str(self.dtype).replace("torch.", "")} (largest '
                             f'{torch.finfo(self.dtype).max:.4g}), where they would become infinite; store them '
                             f'in float32 (--cache_dtype float32)')
        # float16 rounds each value by at most 2^-11 of it, but values below its smallest normal number (6.1e-5)
        # lose their precision or become 0: features of that size (a randomly initialised network's can be 1e-10)
        # would be stored as zeros, and the run would score nothing.
        change = (stored.double() - features.double()).norm(dim=1)
        changed = change > CACHE_ROUNDING_TOLERANCE * features.double().norm(dim=1)
        if changed.any():
            row = int(torch.nonzero(changed)[0])
            raise InputError(f'cannot cache {path}: features as small as {float(features[row].abs().max()):.3g} '
                             f'(row {row}) lose their precision in {str(self.dtype).replace("torch.", "")} (smallest '
                             f'normal value {torch.finfo(self.dtype).tiny:.3g}): storing them changes the row by '
                             f'{float(change[row] / features[row].double().norm()):.0%}; store them in float32 '
                             f'(--cache_dtype float32)')
        features = stored
        entry = {'features': features, 'indices': indices, 'skipped': skipped,
                 'fingerprint': split.class_fingerprint(label, sizes=True),
                 'listing_fingerprint': split.class_fingerprint(label, sizes=False)}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if files:
            files.write(save_tensor, path, entry)
        else:
            save_tensor(path, entry)
        return features

    def feature_dim(self, split_name, labels):
        """The stored feature size when the cache holds a file for each of ``labels`` (not yet checked against
        the image files), else None."""
        folder = os.path.join(self.folder, split_name)
        present = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if not all(os.path.basename(self.path(split_name, label)) in present for label in labels):
            return None
        try:
            entry = safe_torch_load(self.path(split_name, labels[0]), mmap=True)
        except (OSError, ValueError):
            return None
        features = entry.get('features') if isinstance(entry, dict) else None
        return features.shape[1] if torch.is_tensor(features) and features.dim() == 2 else None
