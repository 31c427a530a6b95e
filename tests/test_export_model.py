"""export_model.py: a finished run's network and SLDA as one module that loads without this project, and
StreamingLDA.to_linear."""
import json
import subprocess
import sys

import pytest
import torch

import data
import export_model
from conftest import assert_one_line_error, run, unwritable_output
from features import FeatureExtractor
from slda_model import StreamingLDA


@pytest.mark.parametrize('mask', [False, True])
def test_to_linear_gives_the_decision_function(mask):
    generator = torch.Generator().manual_seed(0)
    model = StreamingLDA(6, 5, mask_unseen_classes=mask, device='cpu')
    model.fit(torch.randn(40, 6, generator=generator), torch.randint(0, 3, (40,), generator=generator))
    X = torch.randn(7, 6, generator=generator)
    linear = model.to_linear()
    torch.testing.assert_close(linear(X), model.decision_function(X))
    assert torch.isinf(linear(X)[:, 3:]).all() == mask
    model.fit(X, torch.full((7,), 4))           # a copy: later updates leave it as it was
    assert not torch.allclose(linear(X), model.decision_function(X))


def test_to_linear_of_a_model_with_no_class_yet_is_empty_and_quiet(recwarn):
    linear = StreamingLDA(6, None, device='cpu').to_linear()
    assert linear.weight.shape == (0, 6) and linear(torch.zeros(2, 6)).shape == (2, 0)
    assert not recwarn.list


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
    save = tmp_path_factory.mktemp('run') / 'digits'
    assert run(['--num_classes', 4, '--save_dir', save])[0] == 0
    return save


def project_scores(save, images):
    """The scores this project gives ``images`` (floats in [0, 1]) with the run's network in float32."""
    extractor = FeatureExtractor('resnet18', 'layer4.1', amp=False, preprocessing=data.Preprocessing().at_size(32))
    model = StreamingLDA(512, 10, device='cpu')
    model.load_model(str(save), 'slda_model_weights_final')
    return model.decision_function(extractor(images))


def test_the_exported_module_loads_quietly_without_the_project_and_gives_its_scores(digits_run, tmp_path, recwarn):
    assert export_model.main([str(digits_run), str(tmp_path / 'model.pt2')]) == 0
    assert not recwarn.list, [str(warning.message) for warning in recwarn.list]
    images = data.digits_splits().test.images[:5]
    torch.save(data.normalize(images), tmp_path / 'images.pt')
    loader = ("import json, torch; extra = {'preprocessing.json': ''}; "
              "model = torch.export.load('model.pt2', extra_files=extra).module(); "
              "torch.save(model(torch.load('images.pt')), 'scores.pt'); print(extra['preprocessing.json'])")
    done = subprocess.run([sys.executable, '-I', '-c', loader], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])['image_size'] == 32
    expected = project_scores(digits_run, images)
    torch.testing.assert_close(torch.load(tmp_path / 'scores.pt'), expected, rtol=1e-4, atol=1e-3)


def test_torchscript_on_request_quietly_and_unfinished_runs_refused(digits_run, tmp_path, capsys, recwarn):
    assert export_model.main([str(digits_run), str(tmp_path / 'model.pt')]) == 0
    assert not recwarn.list, [str(warning.message) for warning in recwarn.list]
    images = data.digits_splits().test.images[:3]
    traced = torch.jit.load(str(tmp_path / 'model.pt'))
    torch.testing.assert_close(traced(data.normalize(images)), project_scores(digits_run, images),
                               rtol=1e-4, atol=1e-3)
    assert export_model.main([str(tmp_path), str(tmp_path / 'x.pt2')]) == 2
    assert 'config.json not found: give the save folder of a run' in capsys.readouterr().err
    assert export_model.main([str(digits_run), str(tmp_path / 'nowhere' / 'x.pt2')]) == 2
    assert 'x.pt2: its folder does not exist' in capsys.readouterr().err


def test_the_model_of_a_fixed_covariance_run_with_oas_is_loaded_as_the_run_had_it(tmp_path):
    # OAS shrinks a fixed covariance by the base initialisation's samples: a plastic model shrank by all of them
    save = tmp_path / 'fixed_oas'
    assert run(['--num_classes', 4, '--no-streaming_update_sigma', '--shrinkage', 'oas', '--save_dir', save])[0] == 0
    _, model = export_model.load_run(str(save))
    summary = json.loads((save / 'summary.json').read_text())
    assert not model.streaming_update_sigma and int(model.base_samples) < int(model.num_updates)
    assert model.shrinkage_used == pytest.approx(summary['increments'][-1]['heads']['slda']['shrinkage'], rel=1e-12)


@pytest.mark.parametrize('where', ['folder', 'unwritable'])
def test_an_output_that_cannot_be_written_is_one_line_naming_it_before_any_work(tmp_path, capsys, monkeypatch, where):
    output = unwritable_output(tmp_path, where, 'model.pt2')
    monkeypatch.setattr(export_model, 'load_run', lambda *args: pytest.fail('worked before checking'))
    code = export_model.main([str(tmp_path), str(output)])
    assert_one_line_error(code, capsys.readouterr(), str(output))
