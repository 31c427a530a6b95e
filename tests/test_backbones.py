"""Backbones beyond the paper's ResNet-18: timm models and torchvision's transformers, their preprocessing,
weights from local files only, token pooling, and end-to-end runs. Every network here is randomly initialised
(timm's tiny test_* models where a real one is not needed): nothing is downloaded."""
import json

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

import backbones
import config
import data
from conftest import assert_one_line_error, build_image_folder, run
from feature_cache import cache_key
from features import FeatureExtractor


def extractor_of(arch, size=32, **options):
    """A float32 extractor of ``arch`` at ``size`` pixels with the network's own preprocessing."""
    preprocessing = backbones.default_preprocessing(arch, None).at_size(size)
    return FeatureExtractor(arch, amp=False, preprocessing=preprocessing, **options).load()


def images(n=3, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('arch', ['timm:test_vit', 'timm:test_vit3', 'timm:test_convnext',
                                  'timm:vit_base_patch16_clip_224'])
def test_the_default_feature_is_timms_own_pre_logits_output(arch):
    extractor = extractor_of(arch)
    model = extractor.network.model
    batch = images()
    mean, std = timm.data.resolve_data_config({}, model=model)['mean'], model.pretrained_cfg['std']
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(data.normalize(batch, mean, std)), pre_logits=True)
    assert extractor.layer == backbones.PRE_LOGITS and extractor.dim == model.num_features
    torch.testing.assert_close(extractor(batch), expected, rtol=1e-5, atol=1e-5)


def test_the_preprocessing_is_the_networks_own():
    vit = backbones.default_preprocessing('timm:vit_base_patch16_224.augreg_in21k', None)
    assert (vit.image_size, vit.resize_size, vit.interpolation, vit.mean) == (224, 248, 'bicubic', (0.5, 0.5, 0.5))
    dinov2 = backbones.default_preprocessing('timm:vit_small_patch14_dinov2.lvd142m', None)
    assert (dinov2.image_size, dinov2.resize_size, dinov2.mean) == (518, 518, data.IMAGENET_MEAN)
    assert backbones.default_preprocessing('resnet18', None) == data.Preprocessing()
    swin = backbones.default_preprocessing('swin_t', 'IMAGENET1K_V1')      # torchvision's weight transforms
    assert (swin.image_size, swin.resize_size, swin.interpolation) == (224, 232, 'bicubic')
    assert data.Preprocessing().at_size(32).resize_size == 37           # 32 / 0.875, as before


def test_token_pooling_matches_its_definition():
    extractor = extractor_of('timm:test_vit2', layer='blocks.1', pooling='mean')     # a register token, no class token
    model, batch = extractor.network.model, images()
    tokens = {}
    hook = model.blocks[1].register_forward_hook(lambda module, inputs, output: tokens.update(out=output))
    with torch.no_grad():
        features = extractor(batch)
    hook.remove()
    assert model.num_prefix_tokens == 1 and model.cls_token is None
    torch.testing.assert_close(features, tokens['out'][:, 1:].mean(dim=1))
    cls = extractor_of('timm:test_vit', layer='blocks.1', pooling='auto')
    hook = cls.network.model.blocks[1].register_forward_hook(lambda module, inputs, output: tokens.update(out=output))
    with torch.no_grad():
        features = cls(batch)
    hook.remove()
    torch.testing.assert_close(features, tokens['out'][:, 0])
    with pytest.raises(backbones.SettingError, match='has no class token; use --pooling mean'):
        extractor_of('timm:test_vit2', layer='blocks.1', pooling='cls')
    with pytest.raises(backbones.SettingError, match='--pooling cls applies to token outputs'):
        extractor_of('timm:test_convnext', layer='stages.1', pooling='cls')


def test_torchvision_vision_transformer_features_are_its_class_token_before_the_head():
    torch.manual_seed(0)
    extractor = FeatureExtractor('vit_b_16', amp=False, preprocessing=data.Preprocessing())
    extractor.load()
    model = extractor.network.model
    batch = images(1, 224)
    with torch.no_grad():       # torchvision's VisionTransformer.forward up to its head
        patches = model._process_input(data.normalize(batch))
        expected = model.encoder(torch.cat([model.class_token.expand(1, -1, -1), patches], dim=1))[:, 0]
    assert extractor.dim == 768
    torch.testing.assert_close(extractor(batch), expected, rtol=1e-4, atol=1e-4)


def test_two_networks_or_two_preprocessings_never_share_a_cache_entry(tmp_path):
    splits = data.digits_splits()
    vit = extractor_of('timm:test_vit')
    keys = {cache_key(extractor.identity, splits, torch.float16) for extractor in (
        vit, extractor_of('timm:test_convnext'), extractor_of('timm:test_vit', size=48),
        FeatureExtractor('timm:test_vit', amp=False, preprocessing=data.Preprocessing(32, 37)),
        extractor_of('timm:test_vit', layer='blocks.1', pooling='mean'), extractor_of('timm:test_vit', seed=1))}
    assert len(keys) == 6
    assert cache_key(extractor_of('timm:test_vit').identity, splits, torch.float16) in keys     # and is stable
    assert json.loads(vit.identity)['timm'] == timm.__version__


def write_hub_cache(cache, repo, state):
    """A Hugging Face cache holding ``state`` as ``repo``'s model.safetensors, as huggingface_hub lays it out."""
    folder = cache / f'models--{repo.replace("/", "--")}'
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text('0' * 40)
    (folder / 'snapshots' / ('0' * 40)).mkdir(parents=True)
    save_file(state, folder / 'snapshots' / ('0' * 40) / 'model.safetensors')


def test_pretrained_timm_weights_come_only_from_the_local_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    root = build_image_folder(tmp_path)[0]
    argv = ['--dataset', 'imagefolder', '--images_dir', root, '--arch', 'timm:test_vit.r160_in1k',
            '--num_workers', 0, '--class_increment', 3, '--save_dir', tmp_path / 'out', '--no-progress']
    code, out = run(argv, capsys)
    assert_one_line_error(code, out, 'timm model test_vit.r160_in1k', 'never downloads',
                          str(tmp_path / 'hub' / 'models--timm--test_vit.r160_in1k'))
    torch.manual_seed(5)
    trained = timm.create_model('test_vit')
    write_hub_cache(tmp_path / 'hub', 'timm/test_vit.r160_in1k', trained.state_dict())
    extractor = FeatureExtractor('timm:test_vit.r160_in1k', weights=backbones.PRETRAINED, amp=False).load()
    for name, tensor in trained.state_dict().items():
        assert torch.equal(extractor.network.model.state_dict()[name], tensor), name


def test_a_safetensors_checkpoint_loads_and_a_foreign_one_is_named(tmp_path, capsys):
    torch.manual_seed(3)
    trained = timm.create_model('test_convnext')
    save_file(trained.state_dict(), tmp_path / 'convnext.safetensors')
    extractor = extractor_of('timm:test_convnext', checkpoint=str(tmp_path / 'convnext.safetensors'))
    assert extractor.weights_report.startswith(f'loaded {len(trained.state_dict())} of')
    for name, tensor in trained.state_dict().items():
        assert torch.equal(extractor.network.model.state_dict()[name], tensor), name
    save_file({'encoder.weight': torch.zeros(2)}, tmp_path / 'other.safetensors')
    code, out = run(['--arch', 'timm:test_convnext', '--base_init_ckpt', tmp_path / 'other.safetensors',
                     '--num_classes', 2, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, 'other.safetensors', 'encoder.weight')
    (tmp_path / 'broken.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(backbones.InputError, match='broken.safetensors is not a readable .safetensors file'):
        extractor_of('timm:test_convnext', checkpoint=str(tmp_path / 'broken.safetensors'))


@pytest.mark.parametrize('given, fragments', [
    (dict(arch='timm:vit_tiny_patch16_2244'), ['timm has no model vit_tiny_patch16_2244', 'vit_tiny_patch16_224']),
    (dict(arch='timm:vit_tiny_patch16_224.in22k'), ['no pretrained tag in22k', 'augreg_in21k']),
    (dict(arch='resnet181', extract_layer='x'), ['not a torchvision classification model', 'resnet18']),
    (dict(arch='timm:test_vit', weights='IMAGENET1K_V1'), ['a timm model takes DEFAULT']),
    (dict(arch='timm:test_vit', dataset='imagenet', images_dir='.'), ['paper\'s resnet18', '--weights']),
    (dict(arch='timm:test_vit', pooling='mean'), ['--pooling mean applies to a named --extract_layer']),
    (dict(weights='none', checkpoint='base.pth'), ['--weights none and --base_init_ckpt contradict']),
    (dict(arch='timm:'), ['name a model']),
])
def test_bad_backbone_settings_are_one_line_naming_the_flag(given, fragments):
    with pytest.raises(backbones.SettingError) as caught:
        built = config.make_config(**given)
        backbones.check_arch(built.network.arch)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_a_layer_the_network_lacks_is_named(tmp_path, capsys):
    code, out = run(['--arch', 'timm:test_vit', '--weights', 'none', '--extract_layer', 'blocks.99',
                     '--num_classes', 2, '--save_dir', tmp_path / 'out'], capsys)
    assert_one_line_error(code, out, '--extract_layer blocks.99', 'blocks.')


def test_digits_and_an_image_folder_run_end_to_end_with_a_timm_vit(tmp_path, capsys):
    code, out = run(['--arch', 'timm:vit_tiny_patch16_224', '--weights', 'none', '--num_classes', 4,
                     '--save_dir', tmp_path / 'digits', '--no-plot'], capsys)
    assert code == 0, out.err
    saved = json.loads((tmp_path / 'digits' / 'config.json').read_text())
    assert saved['feature_dim'] == 192 and saved['preprocessing']['mean'] == [0.5, 0.5, 0.5]
    assert saved['preprocessing']['centre_crop'] is False       # the digits are resized square, not cropped
    assert saved['settings']['network']['extract_layer'] == 'pre_logits'
    root = build_image_folder(tmp_path)[0]
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--arch', 'timm:vit_tiny_patch16_224',
                     '--weights', 'none', '--num_workers', 0, '--class_increment', 3, '--save_dir', tmp_path / 'folder_out', '--no-plot'],
                    capsys)
    assert code == 0, out.err
    saved = json.loads((tmp_path / 'folder_out' / 'config.json').read_text())
    assert saved['preprocessing'] == {'image_size': 224, 'resize_size': 248, 'interpolation': 'bicubic',
                                      'mean': [0.5, 0.5, 0.5], 'std': [0.5, 0.5, 0.5], 'centre_crop': True}
    assert saved['settings']['data']['options']['image_size'] == 224
    accuracies = json.loads(next((tmp_path / 'folder_out').glob('accuracies_*.json')).read_text())
    assert np.isfinite(accuracies['seen_classes_top1']).all()


def test_torchvision_vit_b_16_runs_on_a_folder_with_768_d_features(tmp_path, capsys):
    root = build_image_folder(tmp_path)[0]
    code, out = run(['--arch', 'vit_b_16', '--weights', 'none', '--image_size', 224, '--dataset', 'imagefolder',
                     '--images_dir', root, '--num_workers', 0, '--num_classes', 2, '--class_increment', 1, '--save_dir', tmp_path / 'out', '--no-plot'], capsys)
    assert code == 0, out.err
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['feature_dim'] == 768
    code, out = run(['--arch', 'vit_b_16', '--weights', 'none', '--image_size', 64, '--dataset', 'imagefolder',
                     '--images_dir', root, '--num_workers', 0, '--class_increment', 3, '--save_dir', tmp_path / 'small'],
                    capsys)
    assert_one_line_error(code, out, '--arch vit_b_16 cannot take 64x64 images', '--image_size')
