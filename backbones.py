"""Frozen backbones by name: any torchvision classification model (``resnet18``, ``vit_b_16``, ``swin_t``) or any
timm model (``timm:NAME`` or ``timm:NAME.TAG``, e.g. ``timm:vit_small_patch14_dinov2.lvd142m``); the
preprocessing each network expects; its pretrained weights, read from the local torch and Hugging Face caches
only; and ``FeatureNetwork``, which turns one layer's output into one feature vector per image.

The feature of a network is its pre-logits feature (``pre_logits``: what its classifier receives, pooled by the
network's own rule: class token, mean of tokens, attention or average pooling) unless a layer is named; the
paper's ResNet-18 keeps the paper's ``layer4.1``, averaged over space, which gives the same 512 numbers.
"""
import difflib
import math
import os
import sys

import torch
from torch import nn

import data
from errors import InputError, MissingFileError
from options import SettingError
from retrieve_any_layer import ModelWrapper
from utils import safe_torch_load

# Pretrained weights come from local files only: timm's hub lookups must never reach the network.
os.environ['HF_HUB_OFFLINE'] = '1'

TIMM_PREFIX = 'timm:'
PRE_LOGITS = 'pre_logits'
PAPER_ARCH, PAPER_LAYER = 'resnet18', 'layer4.1'
NO_WEIGHTS = 'none'         # --weights none: random initialisation, asked for
PRETRAINED = 'DEFAULT'      # the network's default pretrained weights: torchvision's DEFAULT, or the timm tag's
POOLINGS = ('auto', 'cls', 'mean')


def parse_arch(arch):
    """'resnet18' -> ('torchvision', 'resnet18', None); 'timm:vit_base_patch16_224.augreg_in21k' ->
    ('timm', 'vit_base_patch16_224', 'augreg_in21k')."""
    if not arch.startswith(TIMM_PREFIX):
        return 'torchvision', arch, None
    name, _, tag = arch[len(TIMM_PREFIX):].partition('.')
    return 'timm', name, tag or None


def is_timm(arch):
    return arch.startswith(TIMM_PREFIX)


def timm_variant(arch):
    """'timm:NAME.TAG' -> 'NAME.TAG', what timm.create_model takes."""
    return arch[len(TIMM_PREFIX):]


def nearest(name, names):
    found = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
    return f' (closest: {", ".join(found)})' if found else ''


def check_arch(arch):
    """Raise SettingError (setting ``arch``) unless ``arch`` names a torchvision classification model or a timm
    model with, when a tag is given, that pretrained tag; the message lists the closest names."""
    library, name, tag = parse_arch(arch)
    if not name:
        raise SettingError('arch', f'--arch {arch}: name a model (timm:NAME or a torchvision model name)')
    if library == 'torchvision':
        import torchvision
        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise SettingError('arch', f'--arch {arch} is not a torchvision classification model{nearest(name, known)}'
                                       f'; for a timm model write --arch timm:NAME')
        return
    import timm
    if not timm.is_model(name):
        raise SettingError('arch', f'--arch {arch}: timm has no model {name}{nearest(name, timm.list_models())}')
    if tag is not None:
        tags = [model.partition('.')[2] for model in timm.list_pretrained(f'{name}.*')]
        if tag not in tags:
            raise SettingError('arch', f'--arch {arch}: timm has no pretrained tag {tag} for {name} (its tags: '
                                       f'{", ".join(tags) or "none"})')


def default_layer(arch):
    """The layer whose output is the feature when --extract_layer is not given."""
    return PAPER_LAYER if arch == PAPER_ARCH else PRE_LOGITS


def timm_pretrained_config(arch):
    """timm's PretrainedCfg of ``arch`` (its tag's, or the model's default tag's)."""
    import timm.models
    return timm.models.get_pretrained_cfg(timm_variant(arch))


def torchvision_weight_set(arch, weights):
    """The torchvision weights enum member ``weights`` (a name, or DEFAULT) of model ``arch``."""
    import torchvision
    check_arch(arch)
    weight_enum = torchvision.models.get_model_weights(arch)
    try:
        return weight_enum.DEFAULT if weights == PRETRAINED else weight_enum[weights]
    except KeyError:
        names = ', '.join(w.name for w in weight_enum)
        raise SettingError('weights', f'--weights {weights} is not a weight set of {arch} (known: {names}, '
                                      f'{PRETRAINED}, {NO_WEIGHTS})') from None


def default_preprocessing(arch, weights):
    """The ``data.Preprocessing`` network ``arch`` expects: timm's data configuration for a timm model (input
    size, crop ratio, interpolation, mean, std); the weights' own transform for torchvision weights; else
    torchvision's ImageNet evaluation transform (resize 256, centre-crop 224, bilinear, ImageNet mean and std)."""
    if is_timm(arch):
        config = timm_pretrained_config(arch)
        size = config.input_size[-1]
        return data.Preprocessing(size, int(math.floor(size / config.crop_pct)), config.interpolation,
                                  tuple(config.mean), tuple(config.std))
    if weights and weights != NO_WEIGHTS:
        transform = torchvision_weight_set(arch, weights).transforms()
        return data.Preprocessing(transform.crop_size[0], transform.resize_size[0], transform.interpolation.value,
                                  tuple(transform.mean), tuple(transform.std))
    return data.Preprocessing()


def weights_file(arch, weights):
    """The local file holding the pretrained ``weights`` of ``arch``; never downloads.

    Raises MissingFileError naming the file or cache folder expected and how to fetch it on a machine with
    internet access."""
    if not is_timm(arch):
        weight_set = torchvision_weight_set(arch, weights)
        path = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(weight_set.url))
        if not os.path.isfile(path):
            raise MissingFileError(f'pretrained weights {arch} {weight_set.name} are not in the local torch cache: '
                                   f'expected {path}. This program never downloads; fetch {weight_set.url} on a '
                                   f'machine with internet access and copy it there (or set TORCH_HOME), or give a '
                                   f'checkpoint with --base_init_ckpt')
        return path
    config = timm_pretrained_config(arch)
    expected = []
    if config.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache
        repo = config.hf_hub_id.partition('@')[0]
        names = [config.hf_hub_filename] if config.hf_hub_filename else ['model.safetensors', 'pytorch_model.bin']
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
        expected.append(os.path.join(constants.HF_HUB_CACHE, f'models--{repo.replace("/", "--")}', 'snapshots',
                                     '*', names[0]))
    for source in (config.url, config.file):
        if source:
            path = source if source == config.file else \
                os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(source))
            if os.path.isfile(path):
                return path
            expected.append(path)
    variant = f'{config.architecture}.{config.tag}' if config.tag else config.architecture
    raise MissingFileError(f'pretrained weights of timm model {variant} are not cached here: expected '
                           f'{" or ".join(expected) or "a file (timm names none for it)"}. This program never '
                           f'downloads; on a machine with internet access run python -c "import timm; '
                           f'timm.create_model(\'{variant}\', pretrained=True)" and copy its Hugging Face cache '
                           f'(HF_HOME) here, or give the file with --base_init_ckpt')


def create_model(arch, pretrained_file, image_size, seed):
    """The network ``arch`` in eval() mode with the weights of ``pretrained_file`` (None: randomly initialised
    with ``seed``). A timm model whose constructor takes ``img_size`` is built for ``image_size`` pixels (timm
    resamples position embeddings of pretrained weights); other networks get what they were built for, and a
    size they cannot take fails at their first forward pass."""
    library, name, _ = parse_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if library == 'timm':
            import timm
            options = {}
            if pretrained_file:
                options = dict(pretrained=True, pretrained_cfg_overlay=dict(
                    file=pretrained_file, custom_load=pretrained_file.endswith('.npz')))
            if image_size != timm_pretrained_config(arch).input_size[-1]:
                try:
                    model = timm.create_model(timm_variant(arch), img_size=image_size, **options)
                except TypeError:        # a model without img_size (a convolutional network): any size goes
                    model = timm.create_model(timm_variant(arch), **options)
            else:
                model = timm.create_model(timm_variant(arch), **options)
        else:
            import torchvision
            check_arch(arch)
            # These two warn that their default initialisation will change unless it is named: name today's
            options = {'init_weights': True} if name in ('googlenet', 'inception_v3') else {}
            model = torchvision.models.get_model(name, weights=None, **options)
            if pretrained_file:
                model.load_state_dict(safe_torch_load(pretrained_file))
    return model.eval()


def read_state_dict(path):
    """The tensors of a checkpoint file: ``.safetensors`` read with safetensors, anything else with
    ``torch.load(weights_only=True)``; timm models' own key conversions apply later (``convert_checkpoint``)."""
    if str(path).endswith('.safetensors'):
        from safetensors.torch import load_file
        try:
            return load_file(path)
        except Exception as e:       # safetensors raises its own SafetensorError for a corrupt header
            raise InputError(f'{path} is not a readable .safetensors file ({e})') from None
    return safe_torch_load(path)


def convert_checkpoint(model, state):
    """``state`` with the key layout of ``model``: a timm model's own ``checkpoint_filter_fn`` converts the layouts
    its weights were published in (original ViT, OpenAI CLIP, ...); torchvision models take theirs as they are."""
    convert = getattr(sys.modules[type(model).__module__], 'checkpoint_filter_fn', None)
    if convert is None or not type(model).__module__.startswith('timm.'):
        return state
    return convert(state, model)


def classifier_of(model):
    """(name, module) of the network's classifier: timm's ``get_classifier()``, else the last nn.Linear a
    torchvision model declares (``fc``, ``heads.head``, ``head``, ``classifier.N``). None if there is none."""
    if hasattr(model, 'get_classifier') and hasattr(model, 'forward_head'):
        classifier = model.get_classifier()
        names = {id(module): name for name, module in model.named_modules()}
        return (names[id(classifier)], classifier) if id(classifier) in names else None
    linear = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linear[-1] if linear else None


def has_class_token(model):
    """Whether the network's token sequences start with a class token (timm's ``cls_token``, torchvision's
    ``class_token``); register tokens, where a network has them, follow it."""
    return any(isinstance(getattr(model, name, None), torch.Tensor) for name in ('cls_token', 'class_token'))


def prefix_tokens(model):
    """How many leading tokens of a token sequence are not image patches (class and register tokens)."""
    if hasattr(model, 'num_prefix_tokens'):
        return int(model.num_prefix_tokens)
    return int(has_class_token(model))      # torchvision's ViT: the class token only


def channels_last_output(model, layer):
    """Whether ``layer``'s 4-D output is (B, H, W, C): timm models that say so (output_fmt NHWC, the Swin
    family) and the feature stages of torchvision's Swin Transformers."""
    if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
        return True
    return type(model).__name__ == 'SwinTransformer' and layer.split('.')[0] in ('features', 'norm')


class FeatureNetwork(nn.Module):
    """``model`` reduced to one feature vector per image.

    ``layer`` ``pre_logits``: the network's own pre-logits feature, (B, d) (timm: ``forward_head(...,
    pre_logits=True)``; torchvision: what its last linear layer receives). A named layer: its output pooled by
    ``pooling``: (B, C) as it is; (B, C, H, W) (or (B, H, W, C), see ``channels_last_output``) averaged over
    space; tokens (B, N, C): ``cls`` takes the class token (token 0), ``mean`` averages the patch tokens (class
    and register tokens left out), ``auto`` is ``cls`` for a network with a class token, else ``mean``.

    Raises SettingError (setting ``extract_layer``) for a layer the network does not have, InputError naming the
    layer when its output cannot make one vector, and SettingError (setting ``pooling``) when ``pooling`` does not
    apply to it.
    """

    def __init__(self, model, layer, pooling='auto'):
        super().__init__()
        self.model, self.layer, self.pooling = model, layer, pooling
        self.prefix_tokens = prefix_tokens(model)
        self.class_token = has_class_token(model)
        if layer == PRE_LOGITS:
            if hasattr(model, 'forward_head') and hasattr(model, 'forward_features'):
                self.read = self._timm_pre_logits
            else:
                classifier = classifier_of(model)
                if classifier is None:
                    raise InputError(f'{type(model).__name__} has no linear classifier whose input could be the '
                                     f'pre-logits feature; name a layer with --extract_layer')
                self.wrapper = ModelWrapper(model, [classifier[0]], return_single=True, read_input=True)
                self.read = self.wrapper
        else:
            try:
                self.wrapper = ModelWrapper(model, [layer], return_single=True)    # checks the name
            except InputError as e:
                raise SettingError('extract_layer', f'--extract_layer {layer}: {e}') from None
            self.channels_last = channels_last_output(model, layer)
            self.read = lambda images: self.pool(self.wrapper(images))

    def _timm_pre_logits(self, images):
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def pool(self, output):
        """A layer's output -> (B, d); see the class docstring."""
        if not torch.is_tensor(output) or output.dim() not in (2, 3, 4):
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise InputError(f'layer {self.layer} outputs {shape}; only (B, C), (B, C, H, W) and tokens (B, N, C) '
                             f'make one feature vector: name another --extract_layer')
        if self.pooling != 'auto' and output.dim() != 3:
            raise SettingError('pooling', f'--pooling {self.pooling} applies to token outputs (B, N, C); layer '
                                          f'{self.layer} gives {tuple(output.shape)}: leave --pooling at auto')
        if output.dim() == 2:
            return output
        if output.dim() == 4:
            return output.mean(dim=(1, 2) if self.channels_last else (2, 3))
        if self.pooling == 'cls' or (self.pooling == 'auto' and self.class_token):
            if not self.class_token:
                raise SettingError('pooling', f'--pooling cls: {type(self.model).__name__} has no class token; use '
                                              f'--pooling mean')
            return output[:, 0]
        return output[:, self.prefix_tokens:].mean(dim=1)

    def forward(self, images):
        return self.read(images)
