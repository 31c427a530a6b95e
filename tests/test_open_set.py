"""Open-set scores: StreamingLDA.mahalanobis against a direct computation, and --ood_classes' AUROCs."""
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import backbones
import data
import runs
from conftest import assert_one_line_error, run
from features import FeatureExtractor
from slda_model import StreamingLDA


@pytest.mark.parametrize('shrinkage', [1e-4, 0.3])
def test_mahalanobis_equals_the_direct_computation(shrinkage):
    rng = np.random.default_rng(0)
    model = StreamingLDA(6, 5, shrinkage_param=shrinkage, device='cpu')
    model.fit(torch.as_tensor(rng.normal(size=(60, 6)), dtype=torch.float32), torch.as_tensor(rng.integers(0, 4, 60)))
    X = rng.normal(size=(7, 6))
    shrunk = (1 - shrinkage) * model.Sigma.double().numpy() + shrinkage * np.eye(6)
    precision = np.linalg.inv(shrunk)
    means = model.muK.double().numpy()
    expected = np.array([[(x - mu) @ precision @ (x - mu) for mu in means[:4]] for x in X])
    distances = model.mahalanobis(torch.as_tensor(X))
    np.testing.assert_allclose(distances[:, :4].numpy(), expected, rtol=1e-6)
    assert (distances[:, 4] == math.inf).all()           # class 4 has no sample yet
    with pytest.raises(ValueError, match=r'X must have shape \(n, 6\)'):
        model.mahalanobis(torch.zeros(2, 5))


def test_mahalanobis_without_a_positive_definite_covariance_uses_the_pseudo_inverse():
    model = StreamingLDA(3, 2, shrinkage_param=0.0, device='cpu')
    model.fit(torch.tensor([[1.0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [0, 4.0, 0]]), torch.tensor([0, 0, 1, 1]))
    assert model.Sigma[2, 2] == 0                        # singular: nothing varies along the third axis
    X = torch.tensor([[2.0, 0, 0], [0, 3.0, 0]])
    pinv = torch.linalg.pinv(model.Sigma.double(), hermitian=True)
    expected = torch.stack([torch.stack([(x - mu) @ pinv @ (x - mu) for mu in model.muK.double()]) for x in X.double()])
    torch.testing.assert_close(model.mahalanobis(X), expected)


@pytest.mark.filterwarnings('ignore:no checkpoint and no pretrained --weights')
def test_a_run_with_held_out_classes_reports_aurocs_of_its_saved_scores(tmp_path, capsys):
    save = tmp_path / 'out'
    network = ['--arch', 'timm:test_vit', '--weights', 'none', '--amp', 'off']       # small, and float32 throughout
    assert run(['--ood_classes', 3, '--class_increment', 3, '--save_dir', save] + network)[0] == 0
    rows = json.loads((save / 'summary.json').read_text())['increments']
    assert [row['classes_seen'] for row in rows] == [3, 6, 7]         # classes 7, 8 and 9 are never trained on
    splits = data.digits_splits()
    novel = np.isin(splits.test.labels, [7, 8, 9])
    extractor = FeatureExtractor('timm:test_vit', amp=False,
                                 preprocessing=backbones.default_preprocessing('timm:test_vit', None).at_size(32))
    features = extractor(splits.test.images)
    for row in rows:
        name = f'min_trained_0_max_trained_{row["classes_seen"]}'
        scores = torch.load(save / f'ood_scores_{name}.pt', weights_only=True)
        known = np.isin(splits.test.labels, np.arange(row['classes_seen']))
        assert row['open_set']['known_images'] == known.sum() and row['open_set']['novel_images'] == novel.sum()
        assert scores['novel'].tolist() == [False] * known.sum() + [True] * novel.sum()
        for score in ('mahalanobis', 'msp'):
            assert row['open_set']['auroc'][score] == roc_auc_score(scores['novel'], scores[score])
        state = torch.load(save / f'slda_model_weights_{name}.pth', weights_only=True)      # a direct computation
        precision = torch.linalg.inv(0.9999 * state['Sigma'].double() + 1e-4 * torch.eye(64, dtype=torch.float64))
        rows_scored = torch.cat([features[known], features[novel]]).double()
        means = state['muK'].double()[:row['classes_seen']]
        centred = rows_scored[:, None, :] - means[None]
        distances = torch.einsum('nkd,de,nke->nk', centred, precision, centred)
        torch.testing.assert_close(scores['mahalanobis'], distances.min(dim=1).values, rtol=1e-4, atol=1e-3)
    loaded = runs.load_run(str(save))           # what plot_results.py draws
    assert loaded.novelty_auroc == {score: tuple(row['open_set']['auroc'][score] for row in rows)
                                    for score in ('mahalanobis', 'msp')}
    code, out = run(['--ood_classes', 10, '--save_dir', tmp_path / 'all'], capsys)
    assert_one_line_error(code, out, '--ood_classes 10', 'at least one must be streamed')
