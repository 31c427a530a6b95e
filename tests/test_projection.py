"""--random_projection: RanPAC's ReLU(z P) before the output layers, reproducible from its seed, its memory
checked before any work, and carried into an exported model."""
import json

import pytest
import torch

import config
import data
import export_model
import projection
from conftest import assert_one_line_error, run
from options import SettingError


def test_the_projection_is_relu_of_a_gaussian_matrix_drawn_from_its_seed():
    features = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    matrix = torch.randn(8, 30, generator=torch.Generator().manual_seed(7))     # the definition, written out
    expected = torch.clamp(features @ matrix, min=0)
    torch.testing.assert_close(projection.RandomProjection(8, 30, seed=7)(features), expected)
    assert torch.equal(projection.RandomProjection(8, 30, seed=7).matrix, projection.RandomProjection(8, 30, 7).matrix)
    assert not torch.equal(projection.RandomProjection(8, 30, seed=8).matrix, matrix)
    assert (projection.RandomProjection(8, 30)(features) >= 0).all()


def test_the_memory_check_refuses_a_size_that_cannot_fit():
    needed = projection.needed_bytes(5000, 100, torch.float32)
    assert needed == 5000 * 5000 * (4 + 16) + 16 * 5000 * 100
    projection.check_memory(5000, 100, torch.float32, 'cpu', available=needed)
    with pytest.raises(SettingError, match=r'--random_projection 5000 needs about 0\.5 GiB.*0\.3 GiB is available'):
        projection.check_memory(5000, 100, torch.float32, 'cpu', available=needed - 2**27)
    assert projection.available_bytes('cpu') > 0


def test_a_projected_run_fits_and_exports_its_projection(tmp_path, capsys, monkeypatch):
    save = tmp_path / 'out'
    assert run(['--num_classes', 4, '--random_projection', 64, '--projection_seed', 3, '--save_dir', save])[0] == 0
    summary = json.loads((save / 'summary.json').read_text())
    model = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
    assert model['muK'].shape == (10, 64) and (model['muK'] >= 0).all()       # means of ReLU outputs
    assert summary['final']['slda']['top1'] > 0
    assert export_model.main([str(save), str(tmp_path / 'model.pt')]) == 0
    classifier = torch.jit.load(str(tmp_path / 'model.pt'))
    assert classifier(data.normalize(data.digits_splits().test.images[:2])).shape == (2, 10)
    monkeypatch.setattr(projection, 'available_bytes', lambda device: 2**20)
    code, out = run(['--random_projection', 2000, '--save_dir', tmp_path / 'big'], capsys)
    assert_one_line_error(code, out, '--random_projection 2000', 'GiB is available')
    assert not (tmp_path / 'big').exists()


def test_a_projection_seed_without_a_projection_is_refused():
    with pytest.raises(SettingError, match='--projection_seed is the seed of --random_projection'):
        config.make_config(projection_seed=2)
