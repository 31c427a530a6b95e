"""The feature extractor's network: loading checkpoints into it (key prefixes, the report of what was not
loaded), and the decoding workers that feed it."""
import os
import re

import torch
import torchvision

import config
from conftest import build_image_folder, make_checkpoint
from features import load_checkpoint_into


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
