"""The configuration of an experiment: one frozen, typed object per concern, each field declared once with its
default, check, flags and whether it changes results (options.py), and ``make_config``, the one place where
defaults that depend on the dataset or on each other are filled in.

    from config import make_config
    config = make_config(dataset='digits', classes_per_batch=3, save_dir='runs/digits')

The dataset, the ordering and each output layer declare their own options (datasets.py, protocol.py, heads.py);
a value for an option that the chosen ones do not take is refused, naming who takes it.
"""
import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch

import backbones
import protocol
from datasets import DATASETS, NoOptions
from heads import HEADS
from options import (Settings, SettingError, as_dict, at_least, comma_list, described, fields_of, flag_of,
                     option, results_settings, seed)
from protocol import ORDERINGS
from utils import nearest_existing

PROJECT = os.path.dirname(os.path.abspath(__file__))
IMAGE_FILES = os.path.join(PROJECT, 'image_files')
SCHEMA_VERSION = 2      # of config.json and summary.json; folders without one were written by earlier releases


@dataclass(frozen=True)
class DataSettings(Settings):
    dataset: str = option('digits', '; '.join(f'{e.name}: {e.help}' for e in DATASETS.values()) +
                          ' (default: imagenet with --images_dir, as in the original, else digits)',
                          choices=tuple(DATASETS))
    options: Settings = NoOptions()      # the dataset's own (datasets.DatasetEntry.options)


@dataclass(frozen=True)
class NetworkSettings(Settings):
    arch: str = option('resnet18', 'the frozen network: a torchvision classification model (resnet18, vit_b_16, '
                                    'swin_t, ...) or any timm model as timm:NAME or timm:NAME.TAG, e.g. '
                                    'timm:vit_small_patch14_dinov2.lvd142m (README: Backbones)', metavar='NAME')
    extract_layer: Optional[str] = option(
        None, 'layer whose output, pooled to one vector, is the feature: a module name (spatial outputs are '
              'averaged; tokens as --pooling says) or pre_logits, the network\'s own feature before its classifier '
              '(default: layer4.1 for resnet18, the paper\'s, else pre_logits)', metavar='NAME')
    pooling: str = option('auto', 'how a named layer\'s token output (B, N, C) becomes one vector: cls takes the '
                                  'class token, mean averages the patch tokens, auto is cls where the network has '
                                  'a class token', choices=backbones.POOLINGS)
    checkpoint: Optional[str] = option(
        None, 'checkpoint of the network trained on the base classes (default for imagenet: '
              'imagenet_100_class_ckpt.pth in the first of ./imagenet_files/, this project\'s image_files/ and '
              'imagenet_files/ that holds it)', flags=('--base_init_ckpt',), metavar='PATH')
    allow_partial_checkpoint: bool = option(
        False, 'use a checkpoint that lacks tensors the feature layer depends on (they keep their random '
               'initialisation; said on standard error and in config.json)')
    weights: Optional[str] = option(None, 'pretrained weights from the local caches, never downloaded: a '
                                          'torchvision weight set (IMAGENET1K_V1, ...), DEFAULT for the network\'s '
                                          'default (a timm model: its tag\'s), or none for a random '
                                          'initialisation (default: DEFAULT for a timm model named with its '
                                          'tag, else the dataset\'s: IMAGENET1K_V1 for core50, cifar100 and '
                                          'cifar10, none for the digits and imagefolder, the base checkpoint for '
                                          'imagenet)', metavar='NAME')
    feature_dim: Optional[int] = option(None, 'expected feature size; checked against the network (default: found)',
                                        flags=('--input_feature_size',), metavar='N', check=at_least(1))
    amp: str = option('auto', 'bfloat16 autocast for the network: auto uses it on CUDA and on CPUs with bfloat16 '
                              'instructions', choices=('auto', 'on', 'off'))


@dataclass(frozen=True)
class StreamSettings(Settings):
    ordering: str = option('class_incremental', 'order of the stream: ' + '; '.join(
        f'{e.name}: {e.help}' for e in ORDERINGS.values()) + ' (see README; default: the dataset\'s, iid for '
                           'core50, else class_incremental)', choices=tuple(ORDERINGS))
    base_init: bool = option(True, 'fit the first batch with fit_base (default: the dataset\'s; every dataset but '
                                   'core50); --no_base_init streams every class', off_flags=('--no_base_init',))
    options: Settings = protocol.ClassIncrementalOptions()    # the ordering's own (protocol.OrderingEntry.options)


@dataclass(frozen=True)
class HeadSettings(Settings):
    heads: tuple = option(('slda',), 'output layers fitted on the same features in the same stream order, '
                                     'comma-separated: ' + ', '.join(f'{e.name} ({e.help})' for e in HEADS.values()) +
                          '; summary.json gets each one\'s accuracies', parse=comma_list,
                          metavar='LIST', check=lambda names: None if len(set(names)) == len(names) and
                          'slda' in names and set(names) <= set(HEADS) else
                          f'must be a comma-separated list of {", ".join(HEADS)}, without repeats, slda included')
    random_projection: Optional[int] = option(
        None, 'map the features to M dimensions by a fixed random Gaussian matrix followed by ReLU (RanPAC\'s '
              'expansion) before every output layer; applied after the feature cache. SLDA then holds an M x M '
              'covariance, checked against free memory before any work', metavar='M', check=at_least(1))
    projection_seed: Optional[int] = option(None, 'seed of the --random_projection matrix (default: 0)', metavar='N',
                                            check=seed)
    options: dict = dataclasses.field(default_factory=lambda: {'slda': HEADS['slda'].options()})


@dataclass(frozen=True)
class CacheSettings(Settings):
    feature_cache: Optional[str] = option(None, 'folder to keep pooled features in across runs', metavar='DIR',
                                          changes_results=lambda folder: folder is not None)
    cache_dtype: str = option('float16', 'precision of cached features', choices=('float16', 'float32'))


@dataclass(frozen=True)
class RunSettings(Settings):
    seed: int = option(0, 'seed for --shuffle_data and random initialisation', metavar='N', check=seed)
    extraction_batch_size: int = option(256, 'images per network batch', flags=('--batch_size',), metavar='N',
                                        check=at_least(1))
    device: str = option('auto', 'auto, cpu, cuda or cuda:N', metavar='DEV')
    num_workers: Optional[int] = option(None, 'image-decoding processes (default: 0 on the CPU and for digits: '
                                              'decode in the main process on torch\'s threads, taking turns with '
                                              'the network; else one per CPU this process may use, at most 32)',
                                        metavar='N', check=at_least(0),
                                        changes_results=False)
    save_dir: Optional[str] = option(None, 'output folder (default: streaming_experiments/<expt_name>)',
                                     metavar='DIR', changes_results=False)
    expt_name: Optional[str] = option(None, 'experiment name (default: slda_<dataset>_<plastic|fixed>, with the '
                                            'ordering and its seed outside the class-incremental one)',
                                      metavar='NAME', changes_results=False)
    save_preds: str = option('every', 'write the test probabilities (preds_*.pt) after every batch, after the last '
                                      'only, or never; at ImageNet scale they total 1.1 GB',
                             choices=('every', 'final', 'none'), changes_results=False)
    offline_accuracies: Optional[str] = option(
        None, 'JSON file {"top1": [...], "top5": [...]} with an offline model\'s accuracy after each batch, as '
              'fractions in (0, 1] or in percent (read as percent when any value exceeds 1); adds Omega_all '
              '(mean of ours / offline) to summary.json', metavar='FILE')
    plot: bool = option(True, 'write learning_curve.png into the save folder at the end', off_flags=('--no-plot',),
                        changes_results=False)
    dist_timeout: int = option(7200, 'under torchrun: how long a process waits for the others at each exchange, '
                                     'the end of their feature extraction included; raise it when a share takes '
                                     'longer', metavar='SECONDS', check=at_least(1), changes_results=False)
    resume: bool = option(False, 'continue an interrupted run in --save_dir from its last finished batch',
                          changes_results=False)
    progress: bool = option(True, 'progress bars on standard error when it is a terminal',
                            off_flags=('--no-progress',), changes_results=False)


@dataclass(frozen=True)
class Config:
    """Every setting of an experiment, by concern; build it with ``make_config``."""
    data: DataSettings
    network: NetworkSettings
    stream: StreamSettings
    output: HeadSettings
    cache: CacheSettings
    run: RunSettings

    @property
    def dataset(self):
        return DATASETS[self.data.dataset]

    @property
    def ordering(self):
        return ORDERINGS[self.stream.ordering]

    @property
    def slda(self):
        """SLDA's options (heads.SLDAOptions)."""
        return self.output.options['slda']

    @functools.cached_property
    def preprocessing(self):
        """The data.Preprocessing the network gets (network_preprocessing)."""
        return network_preprocessing(self.dataset, self.data.options.image_size, self.network.arch,
                                     self.network.weights)

    def results_settings(self):
        """{dotted name: value} of every setting that changes results: what --resume compares."""
        out = {}
        for group in dataclasses.fields(self):
            out.update(results_settings(getattr(self, group.name), f'{group.name}.'))
        return out

    def to_json(self):
        """{group: {field: value}}, JSON-ready."""
        return {group.name: as_dict(getattr(self, group.name)) for group in dataclasses.fields(self)}


def network_preprocessing(dataset, image_size, arch, weights):
    """The data.Preprocessing network ``arch`` with ``weights`` gets on ``dataset`` (a DatasetEntry): its own
    (backbones.default_preprocessing) at the image size the data fixes or ``image_size`` (--image_size) gives;
    resized square without a crop for datasets of square images."""
    preprocessing = backbones.default_preprocessing(arch, weights).at_size(dataset.input_size or image_size)
    return preprocessing.square() if dataset.square_images else preprocessing


GROUPS = (DataSettings, NetworkSettings, StreamSettings, HeadSettings, CacheSettings, RunSettings)


def component_types():
    """[(what chooses it, its name, its options type)] of every dataset, ordering and output layer."""
    return ([('--dataset', name, e.options) for name, e in DATASETS.items()] +
            [('--ordering', name, e.options) for name, e in ORDERINGS.items()] +
            [('--heads', name, e.options) for name, e in HEADS.items()])


def declared_fields():
    """{name: dataclasses.Field} of every setting with a flag, in the groups and in every component's options
    (a name shared by several, as images_dir is, is one setting: its first declaration)."""
    fields = {}
    for settings_type in list(GROUPS) + [options for _, _, options in component_types()]:
        for name, field in fields_of(settings_type).items():
            if 'help' in field.metadata:
                fields.setdefault(name, field)
    return fields


def flag_of_setting(dotted):
    """The command-line spelling of a setting named as in ``Config.results_settings`` ('run.seed' -> '--seed')."""
    field = declared_fields().get(dotted.rsplit('.', 1)[-1])
    return dotted if field is None else flag_of(field)


def setting_for_flag(name):
    """' (did you mean X, set by --name?)' when ``name`` is the flag of setting X, else ''."""
    for field in declared_fields().values():
        if f'--{name}' in (field.metadata['flags'] or ()) + field.metadata['off_flags']:
            return f' (did you mean {field.name}, set by --{name}?)'
    return ''


def support_folders():
    """Where label files and the base checkpoint are looked for, in order: the original's ./imagenet_files/
    (relative to the working directory, as the original reads it), then this project's image_files/ and
    imagenet_files/."""
    folders = [os.path.abspath('imagenet_files'), IMAGE_FILES, os.path.join(PROJECT, 'imagenet_files')]
    return list(dict.fromkeys(folders))


def make_config(**given):
    """The Config of ``given`` settings, by field name (``None`` values count as not given), with every other
    setting at its default, which may depend on the dataset and the ordering.

    Raises SettingError naming the setting (and its flag) for a value it cannot have, one that the chosen
    dataset, ordering or output layers do not take, or settings that contradict each other; TypeError for a
    name that is no setting."""
    given = {name: value for name, value in given.items() if value is not None}
    for name, value in given.items():
        if isinstance(value, str) and not value.strip():    # an unset shell variable, say: not a value to ignore
            raise SettingError(name, f'{flag_of_setting(name)} is given an empty value; give one or leave the flag out')
    dataset_defaulted = 'dataset' not in given
    dataset = DATASETS.get(given.get('dataset') or ('imagenet' if given.get('images_dir') else 'digits'))
    data = take(DataSettings, given, dataset=dataset.name if dataset else given['dataset'])
    if given.get('split_file') and 'test_split' in given:    # given, not defaulted: the split file replaces it
        raise SettingError('test_split', f'--test_split {given["test_split"]} names a test folder, but --split_file '
                                         f'{given["split_file"]} gives the test images; give one of them')
    data = dataclasses.replace(data, options=take(dataset.options, given))
    check_images_dir(data)
    network = take_network(given, dataset, dataset_defaulted)
    data = with_image_size(data, network)
    ordering_name = given.get('ordering', dataset.ordering)
    ordering = take_ordering(given, dataset, ordering_name)
    heads = take_heads(given, dataset)
    refuse_unused(given, {'--dataset': dataset.name, '--ordering': ordering_name, '--heads': ','.join(heads.heads)})
    stream = take(StreamSettings, given, options=ordering, ordering=ordering_name)
    cache = take(CacheSettings, given)
    run = take_run(given, dataset, data, stream, heads)
    if given:
        raise TypeError(f'unknown setting(s): {", ".join(f"{name}{setting_for_flag(name)}" for name in sorted(given))}')
    config = Config(data, network, stream, heads, cache, run)
    check_inputs(config)
    return config


def take(settings_type, given, **defaults):
    """``settings_type`` built from the values of its fields in ``given`` (removed from it), else ``defaults``,
    else its declared defaults."""
    names = [name for name in fields_of(settings_type) if name in given or name in defaults]
    return settings_type(**{name: given.pop(name) if name in given else defaults[name] for name in names})


def take_ordering(given, dataset, name):
    """The options of ordering ``name`` with the dataset's defaults, and the base initialisation settled."""
    entry = ORDERINGS.get(name)
    if entry is None:
        take(StreamSettings, dict(ordering=name))      # raises, naming the choices
    base_init = given.get('base_init')
    if base_init is False and given.get('base_init_classes') is not None:
        raise SettingError('base_init', '--no_base_init and --base_init_classes contradict each other; give one')
    if base_init is None:
        given['base_init'] = dataset.base_init or given.get('base_init_classes') is not None
    defaults = {}
    fields = fields_of(entry.options)
    if 'classes_per_batch' in fields:
        defaults['classes_per_batch'] = dataset.class_increment
    if 'images_per_batch' in fields:
        defaults['images_per_batch'] = dataset.images_per_batch
    if entry.uses_class_order and given['base_init']:
        defaults['base_init_classes'] = given.get('classes_per_batch', dataset.class_increment)
    no_label_files = given.get('labels_dir') == 'none'
    if no_label_files:
        del given['labels_dir']
    if entry.uses_class_order and not no_label_files and given.get('labels_dir') is None and \
            given.get('class_order_seed') is None:
        defaults['labels_dir'] = next((folder for folder in support_folders() if all(
            os.path.exists(os.path.join(folder, name)) for name in protocol.label_file_names(dataset.name))), None)
    return take(entry.options, given, **{name: value for name, value in defaults.items() if value is not None})


def take_heads(given, dataset):
    if given.get('projection_seed') is not None and given.get('random_projection') is None:
        raise SettingError('projection_seed', '--projection_seed is the seed of --random_projection, which is not '
                                              'given')
    names = given.pop('heads', ('slda',))
    heads = take(HeadSettings, given, heads=comma_list(names) if isinstance(names, str) else tuple(names))
    defaults = {'plastic_covariance': dataset.plastic_covariance}
    return dataclasses.replace(heads, options={name: take(HEADS[name].options, given, **defaults)
                                               for name in heads.heads if fields_of(HEADS[name].options)})


def refuse_unused(given, chosen):
    """A SettingError for the first option left in ``given`` (the chosen components took theirs) that other
    datasets, orderings or output layers take, naming those; ``chosen``: {'--dataset': name, ...}."""
    for name in given:
        users = [(chooser, component, options) for chooser, component, options in component_types()
                 if name in fields_of(options)]
        if users:
            chooser = users[0][0]
            field = fields_of(users[0][2])[name]
            takers = ', '.join(dict.fromkeys(component for who, component, _ in users if who == chooser))
            raise SettingError(name, f'{described(field)} is for {chooser} {takers}; {chooser} '
                                     f'{chosen[chooser]} does not use it')


OWN_DATA_HINT = ' (--images_dir without --dataset means imagenet, as in the original; for your own data pass ' \
                '--dataset imagefolder)'


def take_network(given, dataset, dataset_defaulted=False):
    """The network, with default weights or checkpoint when neither is given (a timm model named with a tag: the
    tag's weights; else the dataset's: a timm model takes its default tag's where the dataset's default is
    pretrained weights, and imagenet's checkpoint is the paper's ResNet-18, for no other network), and its
    default layer; ``dataset_defaulted``: the dataset was not named but implied by --images_dir."""
    arch = given.get('arch', NetworkSettings.arch)
    if backbones.is_timm(arch):
        backbones.check_arch(arch)      # here, before any work: torchvision names are checked when the network loads
    given.setdefault('extract_layer', backbones.default_layer(arch))
    if given['extract_layer'] == backbones.PRE_LOGITS and given.get('pooling', 'auto') != 'auto':
        raise SettingError('pooling', f'--pooling {given["pooling"]} applies to a named --extract_layer; '
                                      f'pre_logits is pooled by the network\'s own rule')
    if given.get('weights') == backbones.NO_WEIGHTS and given.get('checkpoint') is not None:
        raise SettingError('weights', '--weights none and --base_init_ckpt contradict each other; give one')
    if backbones.is_timm(arch) and given.get('weights') not in (None, backbones.PRETRAINED, backbones.NO_WEIGHTS):
        raise SettingError('weights', f'--weights {given["weights"]}: a timm model takes {backbones.PRETRAINED} '
                                      f'(the weights of its tag) or {backbones.NO_WEIGHTS}; name the weights in '
                                      f'--arch timm:NAME.TAG')
    if given.get('checkpoint') is None and given.get('weights') is None:
        if backbones.is_timm(arch) and backbones.parse_arch(arch)[2]:
            given['weights'] = backbones.PRETRAINED        # a tag names the weights
        elif dataset.default_weights:
            given['weights'] = backbones.PRETRAINED if backbones.is_timm(arch) else dataset.default_weights
        elif dataset.default_checkpoint and arch != backbones.PAPER_ARCH:
            raise SettingError('weights', f'--dataset {dataset.name}\'s default network is the paper\'s '
                                          f'{backbones.PAPER_ARCH} trained on the base classes; with --arch {arch} '
                                          f'pass --weights (pretrained weights cached locally, or none) or '
                                          f'--base_init_ckpt PATH')
        elif dataset.default_checkpoint:
            candidates = [os.path.join(folder, dataset.default_checkpoint) for folder in support_folders()]
            found = [path for path in candidates if os.path.isfile(path)]
            if not found:
                raise SettingError('checkpoint', f'--dataset {dataset.name} needs the network trained on the base '
                                                 f'classes: {dataset.default_checkpoint} is in none of '
                                                 f'{", ".join(candidates)}. image_files/README.md says what it is '
                                                 f'and where to get it; or pass --base_init_ckpt PATH, or '
                                                 f'--weights with torchvision weights cached locally'
                                                 f'{OWN_DATA_HINT if dataset_defaulted else ""}')
            given['checkpoint'] = found[0]
    return take(NetworkSettings, given)


def with_image_size(data, network):
    """``data`` with the network's own input size where the dataset takes --image_size and none was given."""
    if 'image_size' not in fields_of(type(data.options)) or data.options.image_size is not None:
        return data
    size = backbones.default_preprocessing(network.arch, network.weights).image_size
    return dataclasses.replace(data, options=dataclasses.replace(data.options, image_size=size))


def take_run(given, dataset, data, stream, heads):
    """The running settings: workers, device, experiment name and save folder follow the others."""
    if given.get('device', 'auto') == 'auto':
        given['device'] = 'cuda' if torch.cuda.is_available() else 'cpu'
    # On the CPU the network and decoding share the cores: decoding in the main process takes turns with the
    # network (features.Extraction) at all of them, as fast as processes and without their start-up or fill
    on_cpu = str(given['device']).partition(':')[0] == 'cpu'
    defaults = {'num_workers': usable_cpus() if dataset.image_files and not on_cpu else 0}
    if given.get('expt_name') is None:
        seeded = getattr(stream.options, 'ordering_seed', None)
        ordering = '' if seeded is None else f'_{stream.ordering}_seed{seeded}'
        given['expt_name'] = f'slda_{data.dataset}{ordering}_{heads.options["slda"].covariance}'
    defaults['save_dir'] = os.path.join('streaming_experiments', given['expt_name'])
    return take(RunSettings, given, **defaults)


def usable_cpus():
    """Decoding workers by default: the CPUs this process may run on (its affinity), at most 32."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    return min(32, cpus)


def check_images_dir(data):
    """A dataset read from a folder needs it."""
    if 'images_dir' not in fields_of(DATASETS[data.dataset].options):
        return
    if not data.options.images_dir:
        raise SettingError('images_dir', f'--dataset {data.dataset} needs --images_dir, the folder holding its '
                                         f'images')
    if not os.path.isdir(data.options.images_dir):
        raise SettingError('images_dir', f'--images_dir {data.options.images_dir} does not exist or is not a '
                                         f'folder')


def check_inputs(config):
    """What the settings name must exist and agree: the checkpoint, class order, device, feature cache."""
    if config.network.checkpoint and not os.path.isfile(config.network.checkpoint):
        paper = (' For ImageNet this is the ResNet-18 trained on the 100 base classes; image_files/README.md says '
                 'what belongs there. Alternatively pass --weights with weights cached locally'
                 if config.data.dataset == 'imagenet' else '')
        raise SettingError('checkpoint', f'--base_init_ckpt {config.network.checkpoint} not found.{paper}')
    order = config.stream.options
    if getattr(order, 'labels_dir', None) and getattr(order, 'class_order_seed', None) is not None:
        raise SettingError('class_order_seed', f'--class_order_seed {order.class_order_seed} and --labels_dir '
                                               f'{order.labels_dir} both give a class order; give one')
    if getattr(order, 'class_order_rng', 'torch') != 'torch' and order.class_order_seed is None:
        raise SettingError('class_order_rng', f'--class_order_rng {order.class_order_rng} draws the class order '
                                              f'with --class_order_seed N; give one (PyCIL and LAMDA-PILOT use 1993)')
    check_device(config.run.device)
    folder = config.cache.feature_cache
    if folder and os.path.exists(folder) and not os.path.isdir(folder):
        raise SettingError('feature_cache', f'--feature_cache {folder} is a file; it must be a folder (or not '
                                            f'exist yet)')
    existing = nearest_existing(folder) if folder else None
    if existing and not os.path.isdir(existing):
        raise SettingError('feature_cache', f'--feature_cache {folder} cannot be made: {existing} is a file')


def check_device(name):
    try:
        device_type = torch.device(name).type
    except (RuntimeError, ValueError):
        raise SettingError('device', f'--device {name} is not a device name: use auto, cpu, cuda, cuda:N or '
                                     f'mps') from None
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available.get(device_type, False):
        raise SettingError('device', f'--device {name}: {device_type} is not available here'
                                     f'{"" if device_type in available else " (this program runs on cpu, cuda or mps)"}'
                                     f'; use --device cpu')
