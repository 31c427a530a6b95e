"""The frozen feature extractor (any torchvision classifier, any layer, spatially mean-pooled) and the
feature store that computes each image's features once: in memory for a run, on disk with --feature_cache
across runs."""
import hashlib
import json
import os
import sys
import warnings
from importlib.metadata import version

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from data import imagenet_normalize
from retrieve_any_layer import ModelWrapper
from utils import UserError, crash_point, safe_torch_load, save_tensor

CHECKPOINT_PREFIXES = ('module.', 'model.')


def cpu_supports_bfloat16():
    """True on CPUs with native bfloat16 matrix instructions (AVX512-BF16 or AMX), where autocast pays."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint_into(model, path):
    """Load the tensors of a checkpoint that match ``model`` by name and shape; report the rest.

    The checkpoint is a state dict, or a dict holding one under ``state_dict`` or ``model_state``; key
    prefixes ``module.`` (DataParallel) and ``model.`` are removed. Returns a one-line report.
    """
    checkpoint = safe_torch_load(path)
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model_state'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise UserError(f'{path} holds no state dict (looked at the top level, "state_dict" and "model_state")')
    cleaned = {}
    for key, value in state.items():
        while key.startswith(CHECKPOINT_PREFIXES):
            key = key.split('.', 1)[1]
        cleaned[key] = value
    own = model.state_dict()
    matched = {k: v for k, v in cleaned.items() if k in own and torch.is_tensor(v) and v.shape == own[k].shape}
    if not matched:
        raise UserError(f'no tensor of {path} matches the {type(model).__name__} being built '
                        f'(checkpoint keys start {list(cleaned)[:3]}, model keys start {list(own)[:3]}); '
                        f'check --arch')
    model.load_state_dict(matched, strict=False)
    wrong_shape = sorted(k for k in cleaned if k in own and k not in matched)
    unexpected = sorted(k for k in cleaned if k not in own)
    missing = sorted(k for k in own if k not in matched)
    report = f'loaded {len(matched)} of {len(own)} tensors from {path}'
    for label, keys in (('shape differs', wrong_shape), ('not in model', unexpected), ('missing', missing)):
        if keys:
            report += f'; {label}: {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
    return report


def cached_torchvision_weights(arch, weights_name):
    """Path of a torchvision weight file in the local torch cache; never downloads."""
    import torchvision
    try:
        weight_enum = torchvision.models.get_model_weights(arch)
        weights = weight_enum[weights_name] if weights_name != 'DEFAULT' else weight_enum.DEFAULT
    except (KeyError, ValueError):
        names = ', '.join(w.name for w in torchvision.models.get_model_weights(arch))
        raise UserError(f'--weights {weights_name} is not a weight set of {arch} (known: {names}, DEFAULT)') \
            from None
    path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weights.url))
    if not os.path.isfile(path):
        raise UserError(f'pretrained weights {arch} {weights.name} are not in the local torch cache: expected '
                        f'{path}. This program never downloads; fetch {weights.url} on a machine with '
                        f'internet access, copy it there (or set TORCH_HOME), or pass --base_init_ckpt')
    return path


class FeatureExtractor:
    """A frozen network in eval() mode returning the spatially mean-pooled output of one layer.

    Call it on a float image batch (B, 3, H, W) on any device; returns float32 features (B, d) on
    ``device``. ``identity`` is a string that changes whenever the features would, known without building the
    network. ``load()`` builds the network (importing torchvision, about 1.5 s by itself) and sets ``dim``;
    the first call loads at the latest, so a rerun that finds every feature in the cache never does.
    """

    def __init__(self, arch='resnet18', layer='layer4.1', weights=None, checkpoint=None, device='cpu',
                 amp=True, input_size=224, seed=0):
        if weights and checkpoint:
            raise UserError('give either --weights or --base_init_ckpt, not both')
        self.arch, self.layer, self.weights, self.checkpoint = arch, layer, weights, checkpoint
        self.input_size, self.seed = input_size, seed
        self.device = torch.device(device)
        self.amp = bool(amp)
        self.network = None
        self.dim = None
        not_loaded = 'loaded only when a feature is missing from the cache'
        if checkpoint:
            weights_identity = 'checkpoint sha256 ' + file_sha256(checkpoint)
            self.weights_report = f'checkpoint {checkpoint}, {not_loaded}'
        elif weights:
            self.weights_path = cached_torchvision_weights(arch, weights)
            weights_identity = 'torchvision sha256 ' + file_sha256(self.weights_path)
            self.weights_report = f'torchvision weights {weights} ({self.weights_path}), {not_loaded}'
        else:
            self.weights_report = (f'no --base_init_ckpt or --weights: {arch} is randomly initialised '
                                   f'(seed {seed}); features will be far weaker than a trained network\'s')
            warnings.warn(self.weights_report, stacklevel=2)
            weights_identity = f'random init seed {seed} torch {torch.__version__}'
        self.identity = json.dumps({'arch': arch, 'layer': layer, 'weights': weights_identity,
                                    'autocast_bfloat16': self.amp, 'pooling': 'spatial mean',
                                    'torchvision': version('torchvision')}, sort_keys=True)

    def load(self):
        """Build the network and load its weights, once; returns self."""
        if self.network is not None:
            return self
        import torchvision
        if self.arch not in torchvision.models.list_models(module=torchvision.models):
            raise UserError(f'--arch {self.arch} is not a torchvision classification model '
                            f'(for example: resnet18, resnet50, mobilenet_v3_large, efficientnet_b0)')
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = torchvision.models.get_model(self.arch, weights=None)
        if self.checkpoint:
            self.weights_report = load_checkpoint_into(model, self.checkpoint)
        elif self.weights:
            model.load_state_dict(safe_torch_load(self.weights_path))
            self.weights_report = f'loaded torchvision weights {self.weights} from {self.weights_path}'
        network = ModelWrapper(model, [self.layer], return_single=True).eval().to(self.device)
        network.to(memory_format=torch.channels_last)
        for p in network.parameters():
            p.requires_grad_(False)
        self.network = network
        self.dim = self(torch.zeros(1, 3, self.input_size, self.input_size, dtype=torch.uint8)).shape[1]
        return self

    @torch.inference_mode()
    def __call__(self, images):
        """images: (B, 3, H, W), uint8 in [0, 255] (normalised here, on the device) or normalised floats."""
        self.load()
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = imagenet_normalize(images)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            output = self.network(images)
        if output.dim() == 4:
            output = output.mean(dim=(2, 3))
        elif output.dim() != 2:
            raise UserError(f'layer output has shape {tuple(output.shape)}; only (B, C, H, W), pooled over '
                            f'H and W, and (B, C) are supported')
        return output.float()


class IndexSampler(Sampler):
    """Yields whatever indices were set last, so one DataLoader (and its persistent workers) serves every
    increment."""

    def __init__(self):
        self.indices = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def join_classes(classes):
    """[(features, indices) of one class, ...] -> (all features, all indices), in that order."""
    return torch.cat([features for features, _ in classes]), torch.cat([indices for _, indices in classes])


class FeatureStore:
    """Features of whole classes of one split, each class extracted once.

    ``decoder``, when given, turns each batch from the loader into images (see device_decode.py).
    Without a cache directory, classes are kept in memory when ``keep`` is set (test images are scored at
    every increment). With one, each class is a file ``<cache>/<key>/<split>/class_XXXXX.pt`` written
    atomically as soon as its last image is extracted, holding float16 (or float32) features, the images'
    dataset indices and fingerprints of the class's files; a file whose fingerprint no longer matches is
    recomputed. Cached features are always returned as stored (rounded to the cache's precision), so a
    run gives the same numbers whether a class was just extracted or read back.

    ``cache_check`` says how a cached class is checked against its files: ``sizes`` (names and sizes) or
    ``listing`` (names and folder modification times, no stat per file); see ``class_fingerprint``. With
    ``files`` (a utils.BackgroundFiles), ``prefetch`` reads cached classes and joins them into what ``get``
    returns on its thread while the caller computes, and cache files are written there.
    """

    def __init__(self, split, split_name, extractor, batch_size, num_workers, pin_memory, cache_dir=None,
                 cache_key='', cache_dtype=torch.float16, keep=False, skip_bad_images=False, progress=True,
                 decoder=None, collate_fn=None, files=None, cache_check='sizes'):
        self.split = split
        self.split_name = split_name
        self.extractor = extractor
        self.keep = keep
        self.skip_bad_images = skip_bad_images
        self.progress = progress
        self.cache_dtype = cache_dtype
        self.decoder = decoder
        self.files = files
        self.check_sizes = {'sizes': True, 'listing': False}[cache_check]
        self.reading = None         # (labels, future of _read_and_join) from prefetch
        self.memory = {}
        self.skipped = []
        self.images_extracted = 0
        self.cache_dir = None
        if cache_dir:
            self.cache_dir = os.path.join(cache_dir, cache_key, split_name)
            os.makedirs(self.cache_dir, exist_ok=True)
        self.sampler = IndexSampler()
        self.loader = DataLoader(split, batch_size=batch_size, sampler=self.sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=num_workers > 0,
                                 collate_fn=collate_fn)

    def _class_path(self, label):
        return os.path.join(self.cache_dir, f'class_{label:05d}.pt')

    def _read_cached(self, label):
        path = self._class_path(label)
        if not os.path.exists(path):
            return None
        try:
            entry = safe_torch_load(path, mmap=True)    # cache files are written by renaming a finished file
        except UserError:
            return None      # unreadable or unsafe: extract the class again and replace the file
        stored = entry.get('fingerprint' if self.check_sizes else 'listing_fingerprint') \
            if isinstance(entry, dict) else None
        if stored != self.split.class_fingerprint(label, sizes=self.check_sizes):
            return None
        return entry['features'], entry['indices'], entry['skipped'].tolist()

    def _report_bad(self, bad_indices):
        if bad_indices and not self.skip_bad_images:
            raise UserError(f'cannot read image {self.split.describe(bad_indices[0])} (not a readable image or '
                            f'truncated); fix or remove it, or pass --skip_bad_images')
        self.skipped.extend(self.split.describe(i) for i in bad_indices)

    def _finish_class(self, label, features, indices, skipped):
        if self.cache_dir:
            features = features.to(self.cache_dtype)
            entry = {'features': features, 'indices': indices, 'skipped': skipped,
                     'fingerprint': self.split.class_fingerprint(label, sizes=True),
                     'listing_fingerprint': self.split.class_fingerprint(label, sizes=False)}
            if self.files:
                self.files.write(save_tensor, self._class_path(label), entry)
            else:
                save_tensor(self._class_path(label), entry)
        if self.keep:
            self.memory[label] = (features, indices)
        return features, indices

    def prefetch(self, labels):
        """Start reading the cached classes of ``labels`` and joining them with those kept in memory, on the
        file thread while the caller computes; ``get(labels)`` collects the result. A prefetch not yet
        collected is dropped by the next one."""
        if self.cache_dir and self.files:
            labels = sorted(labels)
            kept = {label: self.memory[label] for label in labels if label in self.memory}
            self.reading = (labels, self.files.read(self._read_and_join, labels, kept))

    def _read_and_join(self, labels, kept):
        """({label: _read_cached(label)} for the ``labels`` not in ``kept``, joined): joined is what ``get``
        returns, or None when the cache lacks one of the classes."""
        read = {label: self._read_cached(label) for label in labels if label not in kept}
        if None in read.values():
            return read, None
        return read, join_classes([kept[label] if label in kept else read[label][:2] for label in labels])

    def get(self, labels):
        """Features (n, d) on the CPU and dataset indices (n,) of all images of ``labels``, in dataset order.

        Features are float32, or the cache's precision when there is a cache (StreamingLDA converts them a
        pass at a time)."""
        labels = sorted(labels)
        read, joined = {}, None
        if self.reading is not None:
            (prefetched, future), self.reading = self.reading, None
            if prefetched == labels:
                read, joined = future.result()
        found = {}
        for label in labels:
            if label in self.memory:
                found[label] = self.memory[label]
                continue
            if label in read:
                entry = read[label]
            else:
                entry = self._read_cached(label) if self.cache_dir else None
            if entry is not None:
                features, indices, skipped = entry
                self._report_bad(skipped)     # as if the class had just been extracted
                found[label] = (features, indices)
                if self.keep:
                    self.memory[label] = found[label]
        if joined is not None:
            return joined
        missing = [label for label in labels if label not in found]
        if missing:
            found.update(self._extract(missing))
        return join_classes([found[label] for label in labels])

    def cached_feature_dim(self, labels):
        """The cache's feature size when it holds a file for each of ``labels`` (not yet checked against the
        image files), else None."""
        if not self.cache_dir:
            return None
        present = set(os.listdir(self.cache_dir))
        if not all(os.path.basename(self._class_path(label)) in present for label in labels):
            return None
        try:
            entry = safe_torch_load(self._class_path(labels[0]), mmap=True)
        except UserError:
            return None
        features = entry.get('features') if isinstance(entry, dict) else None
        return features.shape[1] if torch.is_tensor(features) and features.dim() == 2 else None

    def _extract(self, labels):
        if self.files:
            self.files.wait()    # no file work in flight while the DataLoader forks its workers
        self.extractor.load()    # before the workers fork, so that they inherit torchvision
        wanted = np.isin(self.split.labels, labels)
        self.sampler.indices = np.flatnonzero(wanted).tolist()
        per_class_count = np.bincount(self.split.labels[wanted], minlength=self.split.labels.max() + 1)
        pending = {label: ([], [], []) for label in labels}   # features, indices, unreadable images
        done = {}
        bar = tqdm(total=len(self.sampler.indices), desc=f'extracting {self.split_name}', unit='img',
                   disable=None if self.progress else True, file=sys.stderr, leave=False)
        for images, indices, ok in self.loader:
            crash_point('extract_batch')
            if self.decoder is not None:
                images, ok = self.decoder(images, ok)
            self._report_bad(indices[~ok].tolist())
            features = self.extractor(images if ok.all() else images[ok]).cpu()
            if not torch.isfinite(features).all():
                raise UserError(f'the network produced NaN or infinite features for the batch starting at '
                                f'image {self.split.describe(int(indices[0]))}')
            self.images_extracted += int(ok.sum())
            good_indices = indices[ok]
            batch_labels = torch.from_numpy(self.split.labels[good_indices.numpy()])
            for label in batch_labels.unique().tolist():
                rows = batch_labels == label
                pending[label][0].append(features[rows])
                pending[label][1].append(good_indices[rows])
            for index, good in zip(indices.tolist(), ok.tolist()):   # a class is complete after its last image
                label = int(self.split.labels[index])
                if not good:
                    pending[label][2].append(index)
                per_class_count[label] -= 1
                if per_class_count[label] == 0:
                    feats, idx, skipped = pending.pop(label)
                    if not feats:
                        raise UserError(f'every image of class {label} in {self.split_name} is unreadable')
                    done[label] = self._finish_class(label, torch.cat(feats), torch.cat(idx),
                                                     torch.tensor(skipped, dtype=torch.int64))
            bar.update(len(indices))
        bar.close()
        return done


def cache_key(extractor, splits, cache_dtype):
    """A short hash of everything besides the image files that changes cached features."""
    text = json.dumps({'extractor': extractor.identity, 'dataset': splits.name,
                       'transform': splits.transform_description, 'dtype': str(cache_dtype)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
