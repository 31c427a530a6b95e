"""Features of images: the frozen extractor (a torchvision or timm network, see backbones.py, any layer pooled),
``Extraction``, which runs a split's images through it class by class, and ``FeatureReader``, which serves a
split's features computing each class's once: kept in memory for a run, or in a ``FeatureCache`` across runs."""
import contextlib
import hashlib
import json
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, default_collate
from tqdm import tqdm

import backbones
import data
from errors import InputError, MissingFileError, ProjectError
from feature_cache import FeatureCache, cache_key, listings_folder
from options import SettingError
from utils import crash_point, remove_stale_temporaries

# Key prefixes added by wrappers: DataParallel and DistributedDataParallel, torch.compile, other training code
CHECKPOINT_PREFIXES = ('module.', '_orig_mod.', 'model.')


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


class PartialCheckpointError(InputError):
    """A checkpoint lacks tensors that the features depend on; ``tensors`` names them."""
    hint = 'Pass --allow_partial_checkpoint to use it anyway'

    def __init__(self, message, tensors):
        super().__init__(message)
        self.tensors = tensors


def tensors_used_by(model, layer, input_size):
    """Names of the state-dict tensors that the output of ``layer`` depends on: those of every module whose
    forward ends before the layer's does (the layer's own included) and those held directly by the modules
    that contain it, found by running ``model`` on a dummy input; for ``pre_logits``, every tensor but the
    classifier's. Batch-norm batch counts are left out: an eval()-mode output does not use them."""
    if layer == backbones.PRE_LOGITS:
        classifier = backbones.classifier_of(model)
        skipped = {f'{classifier[0]}.{key}' for key in classifier[1].state_dict()} if classifier else set()
        return {key for key in model.state_dict() if key not in skipped and not key.endswith('num_batches_tracked')}
    modules = dict(model.named_modules())
    finished = []
    handles = [module.register_forward_hook(lambda *_, name=name: finished.append(name))
               for name, module in modules.items() if name]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    used = finished[:finished.index(layer) + 1] if layer in finished else finished
    parts = layer.split('.')
    used += ['.'.join(parts[:i]) for i in range(len(parts))]         # the layer's containers, the model first
    names = set()
    for name in used:
        tensors = list(modules[name].named_parameters(recurse=False)) + list(modules[name].named_buffers(recurse=False))
        names.update(f'{name}.{key}' if name else key for key, _ in tensors if key != 'num_batches_tracked')
    return names


def load_checkpoint_into(model, path, required=(), allow_partial=False, needed_by='the features'):
    """Load the tensors of a checkpoint that match ``model`` by name and shape; report the rest.

    The checkpoint (``.safetensors``, or a torch file) is a state dict, or a dict holding one under
    ``state_dict`` or ``model_state``; key prefixes ``module.`` (DataParallel), ``_orig_mod.`` (torch.compile)
    and ``model.`` are removed, and a timm model's own conversion of published layouts applies. The report
    names each tensor not loaded once: held in another shape (as the original's 100-way ``fc``), not in the
    model, or missing from the checkpoint. A tensor of ``required`` (names) that the
    checkpoint lacks, or holds in another shape, raises PartialCheckpointError unless ``allow_partial``.
    Returns (a one-line report, the sorted names of the required tensors not loaded).
    """
    checkpoint = backbones.read_state_dict(path)
    state = checkpoint
    if isinstance(checkpoint, dict):
        for key in ('state_dict', 'model_state'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                state = checkpoint[key]
                break
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise InputError(f'{path} holds no state dict (looked at the top level, "state_dict" and "model_state")')
    cleaned = {}
    for key, value in state.items():
        while key.startswith(CHECKPOINT_PREFIXES):
            key = key.split('.', 1)[1]
        cleaned[key] = value
    cleaned = backbones.convert_checkpoint(model, cleaned)
    own = model.state_dict()
    matched = {k: v for k, v in cleaned.items() if k in own and torch.is_tensor(v) and v.shape == own[k].shape}
    if not matched:
        raise InputError(f'no tensor of {path} matches the {type(model).__name__} being built '
                         f'(checkpoint keys start {list(cleaned)[:3]}, model keys start {list(own)[:3]}); '
                         f'check the architecture')
    lacking = sorted(k for k in required if k not in matched)
    if lacking and not allow_partial:
        raise PartialCheckpointError(f'{path} lacks tensors that {needed_by} depends on, or holds them in another '
                                     f'shape: {", ".join(lacking[:6])}{" ..." if len(lacking) > 6 else ""} '
                                     f'({len(lacking)} in all); is it a checkpoint of this architecture?', lacking)
    model.load_state_dict(matched, strict=False)
    wrong_shape = sorted(k for k in cleaned if k in own and k not in matched)
    unexpected = sorted(k for k in cleaned if k not in own)
    missing = sorted(k for k in own if k not in cleaned)
    report = f'loaded {len(matched)} of {len(own)} tensors from {path}'
    for label, keys in (('shape differs', wrong_shape), ('not in model', unexpected), ('missing', missing)):
        if keys:
            report += f'; {label}: {", ".join(keys[:6])}{" ..." if len(keys) > 6 else ""}'
    return report, lacking


@contextlib.contextmanager
def input_size_checked(arch, input_size):
    """Around a dummy forward pass of network ``arch`` on ``input_size`` x ``input_size`` images: what a
    torchvision network raises for an input it cannot take (the vision transformers assert their one size; a
    convolution or pooling window larger than the feature map it meets is a RuntimeError) becomes a
    SettingError (setting ``arch``) naming --arch and --image_size."""
    try:
        yield
    except (AssertionError, RuntimeError) as e:
        if isinstance(e, (torch.cuda.OutOfMemoryError, NotImplementedError)):   # the device's limits, not the input's
            raise
        reason = str(e).strip().splitlines()[0].rstrip('.') if str(e).strip() else type(e).__name__
        raise SettingError('arch', f'--arch {arch} cannot take {input_size}x{input_size} images: {reason}; choose '
                                   f'another --arch, or another --image_size where the dataset takes one') from e


class FeatureExtractor:
    """A frozen network in eval() mode returning one feature vector per image (backbones.FeatureNetwork).

    ``arch``: a torchvision model name or ``timm:NAME[.TAG]``; ``layer``: a module name or ``pre_logits``
    (default: backbones.default_layer); ``weights``: pretrained weights from the local caches (a torchvision weight
    set, or DEFAULT for the network's default; ``none`` or None: random initialisation with ``seed``, said in a
    warning); ``checkpoint``: a file of weights instead; ``preprocessing``: a data.Preprocessing (default: the
    network's own, backbones.default_preprocessing).

    Call it on an image batch (B, 3, S, S), uint8 in [0, 255] or float in [0, 1], on any device; it is normalised
    with the preprocessing's mean and std on ``device`` and returns float32 features (B, d) there. ``identity`` is
    a string that changes whenever the features would, known without building the network. ``load()`` builds
    the network (importing torchvision or timm, which are slow to import) and sets ``dim``; the first call loads at
    the latest, so a rerun that finds every feature in the cache never does. Loading raises SettingError (setting
    ``arch``) when the network cannot take the preprocessing's image size.
    """

    def __init__(self, arch='resnet18', layer=None, weights=None, checkpoint=None, device='cpu', amp=True,
                 preprocessing=None, seed=0, allow_partial=False, pooling='auto'):
        if weights == backbones.NO_WEIGHTS:
            weights = None
        if weights and checkpoint:
            raise InputError('give either weights or checkpoint, not both')
        self.arch, self.weights, self.checkpoint = arch, weights, checkpoint
        self.layer = layer or backbones.default_layer(arch)
        self.pooling = pooling
        self.preprocessing = preprocessing or backbones.default_preprocessing(arch, weights)
        self.input_size, self.seed = self.preprocessing.image_size, seed
        self.allow_partial = allow_partial
        self.partial = []       # tensors the features depend on that the checkpoint lacked (with allow_partial)
        self.device = torch.device(device)
        self.amp = bool(amp)
        self.network = None
        self.dim = None
        self.weights_path = None
        not_loaded = 'loaded only when a feature is missing from the cache'
        if checkpoint:
            if not os.path.isfile(checkpoint):
                raise MissingFileError(f'checkpoint {checkpoint} not found')
            weights_identity = 'checkpoint sha256 ' + file_sha256(checkpoint)
            self.weights_report = f'checkpoint {checkpoint}, {not_loaded}'
        elif weights:
            self.weights_path = backbones.weights_file(arch, weights)
            weights_identity = f'{weights} sha256 {file_sha256(self.weights_path)}'
            self.weights_report = f'pretrained weights {weights} ({self.weights_path}), {not_loaded}'
        else:
            self.weights_report = (f'no checkpoint and no pretrained --weights: {arch} is randomly initialised '
                                   f'(seed {seed}); features will be far weaker than a trained network\'s')
            warnings.warn(self.weights_report, stacklevel=2)
            weights_identity = f'random init seed {seed} torch {torch.__version__}'
        libraries = {'torchvision': version('torchvision')}
        if backbones.is_timm(arch):
            libraries['timm'] = version('timm')
        self.identity = json.dumps({'arch': arch, 'layer': self.layer, 'weights': weights_identity,
                                    'autocast_bfloat16': self.amp, 'pooling': self.pooling_description(),
                                    'preprocessing': self.preprocessing.describe(), **libraries}, sort_keys=True)

    def pooling_description(self):
        if self.layer == backbones.PRE_LOGITS:
            return 'the network\'s own pre-logits'
        return 'spatial mean' if self.pooling == 'auto' else f'tokens: {self.pooling}'

    def load(self):
        """Build the network and load its weights, once; returns self."""
        if self.network is not None:
            return self
        with input_size_checked(self.arch, self.input_size):    # timm resizes position embeddings here
            model = backbones.create_model(self.arch, self.weights_path, self.input_size, self.seed)
        network = backbones.FeatureNetwork(model, self.layer, self.pooling)     # checks the layer's name
        if self.checkpoint:
            with input_size_checked(self.arch, self.input_size):    # this dummy pass is the first
                required = tensors_used_by(model, self.layer, self.input_size)
            self.weights_report, self.partial = load_checkpoint_into(model, self.checkpoint, required,
                                                                     self.allow_partial, self.layer)
        elif self.weights:
            self.weights_report = f'loaded pretrained weights {self.weights} from {self.weights_path}'
        network = network.eval().to(self.device)
        network.to(memory_format=torch.channels_last)
        for p in network.parameters():
            p.requires_grad_(False)
        with input_size_checked(self.arch, self.input_size):        # the first dummy pass without a checkpoint
            probe = self._forward(network, torch.zeros(1, 3, self.input_size, self.input_size, dtype=torch.uint8))
        self.network, self.dim = network, probe.shape[1]     # only now: a refused network is never used
        return self

    def __call__(self, images):
        """images: (B, 3, S, S), uint8 in [0, 255] or float in [0, 1]."""
        return self._forward(self.load().network, images)

    @torch.inference_mode()
    def _forward(self, network, images):
        images = images.to(self.device, non_blocking=True)
        images = data.normalize(images, self.preprocessing.mean, self.preprocessing.std)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            output = network(images)
        return output.float()


class IndexSampler(Sampler):
    """Yields whatever indices were set last, so one DataLoader (and its persistent workers) serves every call."""

    def __init__(self):
        self.indices = []

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class DecodingWorkerError(ProjectError, RuntimeError):
    """A decoding process of the DataLoader was killed or ran out of shared memory; the message says which."""
    hint = ('pass --num_workers 0 to decode in the main process, or fewer workers; or give /dev/shm more room '
            '(docker run --shm-size)')
    exit_code = 1


# The last line of torch's RuntimeError when a worker could not put a batch into shared memory (raised in the
# worker: "unable to allocate shared memory(shm) ...") or died of a bus error, which is how a full /dev/shm
# kills; and when a worker died otherwise, as the kernel's out-of-memory killer does, or died unseen.
OUT_OF_SHARED_MEMORY = re.compile(r'shared memory|\bshm\b|bus error', re.IGNORECASE)
WORKER_DIED = re.compile(r'DataLoader worker \(pid.*\) (is killed by signal|exited unexpectedly)')


def shared_memory_size():
    """' (/dev/shm holds N MiB)', or '' where there is no /dev/shm."""
    try:
        stat = os.statvfs('/dev/shm')
    except OSError:
        return ''
    return f' (/dev/shm holds {stat.f_blocks * stat.f_frsize >> 20} MiB)'


class Extraction:
    """Runs images of a split through ``extractor``, class by class, batch by batch.

    With ``num_workers`` > 0, each split gets one DataLoader whose decoding processes persist across calls and
    decode the next batches while the network runs: the way to keep a GPU busy. With 0, each batch is decoded
    in this process on as many threads as torch uses (PIL releases the GIL while it decodes and resizes), then
    run through the network: on the CPU, decoding and the network then take turns at every core, with no
    processes to start, or to fill with a whole batch each at every call, and no shared memory
    (bench/README.md, bench_extraction.py).
    ``pin_memory`` pins the decoding processes' batches. ``decoder``, when given, turns each batch into images
    on the network's device, and ``collate_fn`` builds those batches (see device_decode.py).
    """

    def __init__(self, extractor, batch_size=256, num_workers=0, pin_memory=False, decoder=None, collate_fn=None,
                 progress=True):
        self.extractor = extractor
        self.decoder = decoder
        self.progress = progress
        self.loader_options = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                                   persistent_workers=num_workers > 0, collate_fn=collate_fn)
        self.loaders = {}       # id(split) -> (sampler, loader)

    def _loader(self, split):
        if id(split) not in self.loaders:
            sampler = IndexSampler()
            self.loaders[id(split)] = sampler, DataLoader(split, sampler=sampler, **self.loader_options)
        return self.loaders[id(split)]

    def _batches(self, split, indices):
        """Batches (images, dataset indices (B,) int64, ok (B,) bool) of images ``indices`` of ``split``, in
        that order, as ``collate_fn`` (default: the DataLoader's) builds them."""
        if self.loader_options['num_workers']:
            sampler, loader = self._loader(split)
            sampler.indices = indices
            yield from loader
            return
        collate = self.loader_options['collate_fn'] or default_collate
        size = self.loader_options['batch_size']
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            for start in range(0, len(indices), size):
                yield collate(list(pool.map(split.__getitem__, indices[start:start + size])))

    def worker_error(self, error):
        """``error``, a RuntimeError met while extracting, as a DecodingWorkerError when it is torch's report of a
        decoding worker killed or out of shared memory; else None."""
        if not self.loader_options['num_workers']:
            return None
        lines = str(error).strip().splitlines()
        last = lines[-1] if lines else ''
        if OUT_OF_SHARED_MEMORY.search(last):
            return DecodingWorkerError(f'decoding workers ran out of shared memory{shared_memory_size()}: {last}')
        if WORKER_DIED.search(last):
            return DecodingWorkerError(f'a decoding worker died ({last.rstrip(".")}): the kernel kills processes so '
                                       f'when memory runs out, and a full /dev/shm{shared_memory_size()} kills them '
                                       f'with a bus error')
        return None

    def classes(self, split, labels, description, report_bad):
        """Yields (label, features (n, d) float32 on the CPU, dataset indices (n,), indices of unreadable images
        (k,)) for each class of ``labels`` as soon as its last image is through the network. ``report_bad`` is
        called with the indices of each batch's unreadable images, and may raise to stop."""
        self.extractor.load()    # before the workers fork, so that they inherit torchvision
        wanted = np.isin(split.labels, labels)
        order = np.flatnonzero(wanted).tolist()
        remaining = np.bincount(split.labels[wanted], minlength=split.labels.max() + 1)
        pending = {label: ([], [], []) for label in labels}   # features, indices, unreadable images
        bar = tqdm(total=len(order), desc=f'extracting {description}', unit='img',
                   disable=None if self.progress else True, file=sys.stderr, leave=False)
        for images, indices, ok in self._batches(split, order):
            crash_point('extract_batch')
            if self.decoder is not None:
                images, ok = self.decoder(images, ok)
            report_bad(indices[~ok].tolist())
            if not ok.any():     # a batch of unreadable images only: nothing to run (cuDNN refuses empty batches)
                features = torch.zeros(0, 1)
            else:
                features = self.extractor(images if ok.all() else images[ok]).cpu()
            if not torch.isfinite(features).all():
                raise InputError(f'the network produced NaN or infinite features for the batch starting at '
                                 f'image {split.describe(int(indices[0]))}')
            good_indices = indices[ok]
            batch_labels = torch.from_numpy(split.labels[good_indices.numpy()])
            for label in batch_labels.unique().tolist():
                rows = batch_labels == label
                pending[label][0].append(features[rows])
                pending[label][1].append(good_indices[rows])
            for index, good in zip(indices.tolist(), ok.tolist()):   # a class is complete after its last image
                label = int(split.labels[index])
                if not good:
                    pending[label][2].append(index)
                remaining[label] -= 1
                if remaining[label] == 0:
                    features_of_class, indices_of_class, unreadable = pending.pop(label)
                    if not features_of_class:
                        raise InputError(f'every image of class {class_name(split, label)} in {description} is '
                                         f'unreadable (for example {split.describe(index)})')
                    yield (label, torch.cat(features_of_class), torch.cat(indices_of_class),
                           torch.tensor(unreadable, dtype=torch.int64))
            bar.update(len(indices))
        bar.close()


def class_name(split, label):
    classes = getattr(split, 'classes', None)
    return classes[label] if classes else label


class BadImageError(InputError):
    """An image that cannot be read, met while bad images are not to be skipped; ``path`` names it."""
    hint = 'fix or remove it, or pass --skip_bad_images'

    def __init__(self, path):
        super().__init__(f'cannot read image {path} (not a readable image, truncated, or more than '
                         f'{data.MAX_IMAGE_PIXELS:,} pixels)')
        self.path = path


def join_classes(classes):
    """[(features, indices) of one class, ...] -> (all features, all indices), in that order."""
    return torch.cat([features for features, _ in classes]), torch.cat([indices for _, indices in classes])


class FeatureReader:
    """The features of one split's images, each class computed once.

    A class comes from memory (with ``keep``, as test images are scored after every batch), from ``cache`` (a
    FeatureCache) when it holds the class unchanged, or else from ``extraction``, and then goes to the cache.
    With ``files`` (a utils.BackgroundFiles), cache files are written on its thread and ``prefetch`` reads a
    coming batch's cached classes there, joined into one tensor, while the caller computes.

    An unreadable image raises ``BadImageError`` unless ``skip_bad_images``; then it is left out and listed in
    ``skipped`` (also when its class comes from the cache, as if just extracted). A decoding worker killed or
    out of shared memory while extracting raises ``DecodingWorkerError``.
    """

    def __init__(self, split, split_name, extraction=None, cache=None, keep=False, files=None,
                 skip_bad_images=False):
        self.split = split
        self.split_name = split_name
        self.extraction = extraction
        self.cache = cache
        self.keep = keep
        self.files = files
        self.skip_bad_images = skip_bad_images
        self.memory = {}
        self.reading = None         # (labels, future of _read_and_join) from prefetch
        self.skipped = []
        self.images_extracted = 0

    def classes_of(self, indices):
        """The sorted distinct labels of images ``indices``."""
        return np.unique(self.split.labels[np.asarray(indices)]).tolist()

    def take(self, indices):
        """Features (n, d) on the CPU and labels (n,) int64 of images ``indices`` (dataset indices), in that
        order, unreadable images skipped. Features are float32, or the cache's precision with a cache."""
        features, present = self.read_classes(self.classes_of(indices))
        requested = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        if not torch.equal(present, requested):
            rows = torch.searchsorted(present, requested).clamp(max=max(len(present) - 1, 0))
            rows = rows[present[rows] == requested]        # images skipped as unreadable have no row
            features, present = features[rows], present[rows]
        return features, torch.from_numpy(self.split.labels[present.numpy()])

    def prefetch(self, indices):
        """Start reading the cached classes of images ``indices`` and joining them with those kept in memory, on
        the file thread; the ``take`` of the same classes collects it. A prefetch not yet collected is dropped
        by the next one."""
        if self.cache and self.files:
            labels = self.classes_of(indices)
            kept = {label: self.memory[label] for label in labels if label in self.memory}
            self.reading = (labels, self.files.read(self._read_and_join, labels, kept))

    def _read_and_join(self, labels, kept):
        """({label: cache entry} for the ``labels`` not in ``kept``, joined): joined is what ``read_classes``
        returns, or None when the cache lacks one of the classes."""
        read = {label: self.cache.read(self.split, self.split_name, label) for label in labels if label not in kept}
        if None in read.values():
            return read, None
        return read, join_classes([kept[label] if label in kept else read[label][:2] for label in labels])

    def read_classes(self, labels):
        """Features (n, d) and dataset indices (n,) of every readable image of classes ``labels`` (sorted), in
        dataset order."""
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
            entry = read[label] if label in read else \
                self.cache.read(self.split, self.split_name, label) if self.cache else None
            if entry is not None:
                features, indices, skipped = entry
                self._report_bad(skipped)
                found[label] = (features, indices)
                if self.keep:
                    self.memory[label] = found[label]
        if joined is not None:
            return joined
        missing = [label for label in labels if label not in found]
        if missing:
            found.update(self._extract(missing))
        return join_classes([found[label] for label in labels])

    def _report_bad(self, bad_indices):
        if bad_indices and not self.skip_bad_images:
            raise BadImageError(self.split.describe(bad_indices[0]))
        self.skipped.extend(self.split.describe(i) for i in bad_indices)

    def _extract(self, labels):
        if self.files:
            self.files.wait()    # no file work in flight while the DataLoader forks its workers
        done = {}
        # The whole loop, not only the DataLoader's next(): torch reports a dead worker from its SIGCHLD
        # handler, which raises wherever this thread happens to be
        try:
            for label, features, indices, unreadable in self.extraction.classes(self.split, labels, self.split_name,
                                                                                self._report_bad):
                self.images_extracted += len(indices)
                if self.cache:
                    features = self.cache.write(self.split, self.split_name, label, features, indices, unreadable,
                                                self.files)
                if self.keep:
                    self.memory[label] = (features, indices)
                done[label] = (features, indices)
        except RuntimeError as e:
            error = self.extraction.worker_error(e)
            if error is None:
                raise
            raise error from e
        return done


def build_extractor(config, device):
    network = config.network
    amp = network.amp == 'on' or (network.amp == 'auto' and (device.type == 'cuda' or cpu_supports_bfloat16()))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')   # the random-init warning is reported with the rest
        return FeatureExtractor(network.arch, network.extract_layer, network.weights, network.checkpoint, device,
                                amp, config.preprocessing, config.run.seed, network.allow_partial_checkpoint,
                                network.pooling)


def build_readers(config, splits, plan, device, files):
    """The train and test FeatureReaders, the extractor and the feature size.

    With every class of the plan in the cache the network is never needed; otherwise it is loaded now, so that
    a bad --arch, --extract_layer or checkpoint is reported before any work."""
    extractor = build_extractor(config, device)
    options, run = config.data.options, config.run
    # Test features are kept in memory (scored after every batch), and training features too when a class
    # recurs in several batches, as in the iid and instance orderings.
    batch_classes = [np.unique(splits.train.labels[batch.train_indices]) for batch in plan]
    train_classes = np.unique(np.concatenate(batch_classes)).tolist()
    recurring = sum(map(len, batch_classes)) > len(train_classes)
    test_classes = np.unique(splits.test.labels[np.concatenate([batch.test_indices for batch in plan])]).tolist()
    cache, cached_dims = None, {None}
    if config.cache.feature_cache:
        dtype = getattr(torch, config.cache.cache_dtype)
        where = (config.cache.feature_cache, cache_key(extractor.identity, splits, dtype), dtype,
                 options.cache_check == 'sizes')
        found = FeatureCache(*where)
        found.remove_leftovers(['train', splits.test_name])
        remove_stale_temporaries(listings_folder(config.cache.feature_cache))
        cached_dims = {found.feature_dim('train', train_classes), found.feature_dim(splits.test_name, test_classes)}
    feature_dim = cached_dims.pop() if len(cached_dims) == 1 and None not in cached_dims else extractor.load().dim
    if config.cache.feature_cache:
        cache = FeatureCache(*where, dim=feature_dim)
    decoding = {}
    if options.decode_on_device:
        from device_decode import BatchDecoder, collate_encoded
        decoding = dict(decoder=BatchDecoder(config.preprocessing, device), collate_fn=collate_encoded)
    extraction = Extraction(extractor, run.extraction_batch_size, run.num_workers, pin_memory=device.type == 'cuda',
                            progress=run.progress, **decoding)
    train, test = (FeatureReader(split, name, extraction, cache, keep=keep, files=files,
                                 skip_bad_images=options.skip_bad_images)
                   for split, name, keep in ((splits.train, 'train', recurring),
                                             (splits.test, splits.test_name, True)))
    expected = config.network.feature_dim
    if expected is not None and expected != feature_dim:
        raise SettingError('feature_dim', f'--input_feature_size {expected} does not match the network: '
                                          f'{config.network.arch} {config.network.extract_layer} gives {feature_dim} '
                                          f'features')
    return train, test, extractor, feature_dim
