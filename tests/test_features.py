"""The feature extractor's network: loading checkpoints into it (key prefixes, the report of what was not
loaded), refusing an input size it cannot take, and the decoding workers that feed it."""
import os
import re

import pytest
import torch
import torchvision

import config
from conftest import build_image_folder, make_checkpoint, run
from features import FeatureExtractor, load_checkpoint_into
from options import SettingError


def reported_names(report):
    """{label: [tensor names]} of a load_checkpoint_into report ('...; shape differs: a, b; missing: c')."""
    return {label: names.split(', ') for label, names in re.findall(r'; ([a-z ]+): ([^;]+)', report)}


def test_checkpoint_of_a_compiled_model_loads_like_one_of_a_data_parallel_model(tmp_path):
    saved = make_checkpoint(tmp_path / 'compiled.pth', prefix='_orig_mod.', num_classes=1000)
    model = torchvision.models.resnet18()
    report, lacking = load_checkpoint_into(model, tmp_path / 'compiled.pth', required=set(model.state_dict()))
    assert lacking == []
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert report.startswith(f'loaded {len(saved.state_dict())} of {len(saved.state_dict())} tensors')


def test_a_tensor_of_another_shape_is_reported_once(tmp_path):
    saved = make_checkpoint(tmp_path / 'base.pth', num_classes=100)     # the original's layout: a 100-way fc
    model = torchvision.models.resnet18()
    report, _ = load_checkpoint_into(model, tmp_path / 'base.pth', required={'conv1.weight'})
    names = reported_names(report)
    assert names == {'shape differs': ['fc.bias', 'fc.weight']}, report
    assert torch.equal(model.conv1.weight, saved.conv1.weight)


def test_tensors_absent_from_the_checkpoint_are_reported_missing(tmp_path):
    saved = torchvision.models.resnet18()
    state = {k: v for k, v in saved.state_dict().items() if not k.startswith('fc.')}
    torch.save({'model_state': state}, tmp_path / 'headless.pth')
    report, _ = load_checkpoint_into(torchvision.models.resnet18(), tmp_path / 'headless.pth')
    assert reported_names(report) == {'missing': ['fc.bias', 'fc.weight']}, report


def test_decoding_workers_default_to_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    root, _ = build_image_folder(tmp_path)
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0}, raising=False)   # pinned to one CPU ...
    monkeypatch.setattr(os, 'cpu_count', lambda: 8)                                # ... of a larger machine
    built = config.make_config(dataset='imagefolder', images_dir=str(root), save_dir=str(tmp_path / 'out'))
    assert built.run.num_workers == 1


SMALL_INPUT = 32


@pytest.mark.parametrize('arch, layer', [('vit_b_16', 'encoder'), ('inception_v3', 'Mixed_7c')])
def test_a_network_that_cannot_take_the_input_size_is_one_line_naming_arch_and_image_size(
        tmp_path, capsys, arch, layer):
    root, _ = build_image_folder(tmp_path)
    code, out = run(['--dataset', 'imagefolder', '--images_dir', root, '--save_dir', tmp_path / 'out',
                     '--arch', arch, '--extract_layer', layer, '--image_size', SMALL_INPUT, '--num_workers', 0,
                     '--class_increment', 3], capsys)
    lines = out.err.strip().splitlines()
    assert code == SettingError.exit_code and len(lines) == 1 and lines[0].startswith('error: '), out.err
    assert f'--arch {arch}' in lines[0] and f'--image_size {SMALL_INPUT}' in lines[0], lines[0]
    assert not (tmp_path / 'out' / 'summary.json').exists()       # refused before any batch


@pytest.mark.filterwarnings('ignore:no checkpoint or weights given')
@pytest.mark.parametrize('with_checkpoint', [True, False])
def test_a_refused_input_size_is_refused_at_every_load(tmp_path, with_checkpoint):
    checkpoint = None
    if with_checkpoint:     # its dummy pass, which finds the tensors the layer needs, comes first
        checkpoint = str(tmp_path / 'squeezenet.pth')
        torch.save({'state_dict': torchvision.models.squeezenet1_0().state_dict()}, checkpoint)
    extractor = FeatureExtractor('squeezenet1_0', 'features.12', checkpoint=checkpoint, amp=False, input_size=16)
    for _ in range(2):      # a notebook may try again: the refused network is not kept
        with pytest.raises(SettingError) as refused:
            extractor.load()
        assert refused.value.setting == 'arch'
        assert '--arch squeezenet1_0' in str(refused.value) and '--image_size 16' in str(refused.value)
