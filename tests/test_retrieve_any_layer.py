"""retrieve_any_layer.py: named layers' outputs, hooks removed, an unknown layer named."""
import pytest
import torch
import torchvision

from conftest import assert_one_line_error, imagenet_argv, run
from retrieve_any_layer import ModelWrapper


def test_retrieve_any_layer_returns_named_outputs_and_removes_hooks():
    model = torchvision.models.resnet18().eval()
    wrapper = ModelWrapper(model, ['layer3', 'layer4.1'])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        layer3, layer4 = wrapper(images)
        expected = model.layer4(layer3)
    assert layer3.shape == (1, 256, 4, 4)
    torch.testing.assert_close(layer4, expected)
    wrapper.remove_hooks()
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match=r"unknown layer name 'layer4.2' .*nearest: .*layer4\.1"):
        ModelWrapper(model, ['layer4.2'])


def test_an_unknown_layer_on_the_command_line_is_one_line_naming_it(tmp_path, image_folder, capsys):
    root, labels = image_folder
    code, out = run(imagenet_argv(tmp_path, root, labels) + ['--extract_layer', 'layer9'], capsys)
    assert_one_line_error(code, out, "'layer9'")
