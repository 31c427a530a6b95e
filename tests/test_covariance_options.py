"""StreamingLDA beyond the paper's rule: the exact pooled covariance and merge, OAS shrinkage, a model that grows,
each against an independent computation (numpy, scikit-learn)."""
import json

import numpy as np
import pytest
import torch
from sklearn.covariance import OAS
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from conftest import run
from slda_model import StreamingLDA, oas_shrinkage


def stream(seed=0, n=300, d=5, classes=4):
    """Gaussian classes with distinct means and a shared correlated covariance; float64 (n, d), labels (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    mixing = rng.normal(size=(d, d))
    X = rng.normal(size=(n, d)) @ mixing + 3 * rng.normal(size=(classes, d))[y]
    return X, y


def pooled_covariance(X, y):
    """The within-class scatter over the number of samples, written from its definition."""
    centred = X - np.stack([X[y == k].mean(axis=0) for k in np.unique(y)])[np.searchsorted(np.unique(y), y)]
    return centred.T @ centred / len(y)


def fitted(X, y, splits, **options):
    """A float64 StreamingLDA fed the rows in the batches ``splits`` (boundaries) cut."""
    model = StreamingLDA(X.shape[1], 4, device='cpu', dtype=torch.float64, **options)
    for start, end in zip([0] + splits, splits + [len(y)]):
        model.fit(torch.as_tensor(X[start:end]), torch.as_tensor(y[start:end]))
    return model


@pytest.mark.parametrize('splits', [[], [1, 2, 3, 50, 51], [7, 150, 299], list(range(1, 300))])
def test_pooled_is_the_pooled_within_class_covariance_whatever_the_batches(splits):
    X, y = stream()
    model = fitted(X, y, splits, covariance_update='pooled')
    np.testing.assert_allclose(model.Sigma.numpy(), pooled_covariance(X, y), rtol=1e-10, atol=1e-12)
    lda = LinearDiscriminantAnalysis(solver='lsqr', store_covariance=True).fit(X, y)
    np.testing.assert_allclose(model.Sigma.numpy(), lda.covariance_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.muK.numpy(), lda.means_, rtol=1e-12, atol=1e-12)
    order = np.random.default_rng(1).permutation(len(y))
    permuted = fitted(X[order], y[order], splits, covariance_update='pooled')
    torch.testing.assert_close(permuted.Sigma, model.Sigma, rtol=1e-10, atol=1e-12)


def test_pooled_after_a_base_initialisation_and_with_a_fixed_covariance():
    X, y = stream(2)
    model = StreamingLDA(5, 4, device='cpu', dtype=torch.float64, covariance_update='pooled')
    model.fit_base(torch.as_tensor(X[:100]), torch.as_tensor(y[:100]))
    np.testing.assert_allclose(model.Sigma.numpy(), pooled_covariance(X[:100], y[:100]), rtol=1e-10)
    model.fit(torch.as_tensor(X[100:]), torch.as_tensor(y[100:]))
    np.testing.assert_allclose(model.Sigma.numpy(), pooled_covariance(X, y), rtol=1e-10)
    fixed = StreamingLDA(5, 4, device='cpu', dtype=torch.float64, covariance_update='pooled',
                         streaming_update_sigma=False)
    fixed.fit_base(torch.as_tensor(X[:100]), torch.as_tensor(y[:100])).fit(torch.as_tensor(X[100:]),
                                                                         torch.as_tensor(y[100:]))
    np.testing.assert_allclose(fixed.Sigma.numpy(), pooled_covariance(X[:100], y[:100]), rtol=1e-10)
    np.testing.assert_allclose(fixed.muK.numpy(), model.muK.numpy(), rtol=1e-12)


def test_two_shards_merge_into_the_model_of_all_the_data():
    X, y = stream(3)
    whole = fitted(X, y, [], covariance_update='pooled')
    first, second = fitted(X[:130], y[:130], [60], covariance_update='pooled'), \
        fitted(X[130:], y[130:], [], covariance_update='pooled')
    merged = first.merge(second)
    for name in ('muK', 'cK', 'Sigma', 'num_updates'):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-10, atol=1e-12)
    test = torch.as_tensor(stream(4, n=20)[0])
    torch.testing.assert_close(merged.decision_function(test), whole.decision_function(test), rtol=1e-8, atol=1e-8)


def test_merge_is_refused_for_the_papers_rule_and_changes_nothing():
    X, y = stream(5)
    paper, other = fitted(X[:100], y[:100], []), fitted(X[100:], y[100:], [])
    before = {name: tensor.clone() for name, tensor in paper.state_dict().items()}
    with pytest.raises(ValueError, match='merge needs covariance_update=.pooled. and a plastic covariance'):
        paper.merge(other)
    for name, tensor in paper.state_dict().items():
        assert torch.equal(tensor, before[name])
    pooled = fitted(X, y, [], covariance_update='pooled')
    with pytest.raises(ValueError, match='with itself would count its data twice'):
        pooled.merge(pooled)
    with pytest.raises(ValueError, match='same input_shape'):
        pooled.merge(StreamingLDA(3, 4, device='cpu', dtype=torch.float64, covariance_update='pooled'))


@pytest.mark.parametrize('splits', [[], [40, 200]])
def test_oas_shrinkage_is_scikit_learns_oas_of_the_class_centred_data(splits):
    X, y = stream(6)
    model = fitted(X, y, splits, covariance_update='pooled', shrinkage_param='oas')
    centred = X - np.stack([X[y == k].mean(axis=0) for k in range(4)])[y]
    oas = OAS(assume_centered=True).fit(centred)
    shrunk, rho = model.shrunk_covariance()
    np.testing.assert_allclose(shrunk.numpy(), oas.covariance_, rtol=1e-9, atol=1e-12)
    assert rho == pytest.approx(oas.shrinkage_) and model.shrinkage_used == pytest.approx(oas.shrinkage_)
    precision = torch.linalg.inv(shrunk)
    test = torch.as_tensor(stream(7, n=10)[0])
    expected = test @ precision @ model.muK.T - 0.5 * ((model.muK @ precision) * model.muK).sum(1)
    torch.testing.assert_close(model.decision_function(test), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize('update', ['paper', 'pooled'])
def test_a_model_that_grows_equals_one_declared_with_its_final_size(update):
    X, y = stream(8)
    y = np.where(y == 3, 6, y)           # labels 0, 1, 2 and 6: class 6 arrives late, classes 3-5 never
    order = np.argsort(y, kind='stable')
    X, y = X[order], y[order]
    declared = StreamingLDA(5, 7, device='cpu', dtype=torch.float64, covariance_update=update)
    growing = StreamingLDA(5, None, device='cpu', dtype=torch.float64, covariance_update=update)
    for start in range(0, len(y), 37):
        for model in (declared, growing):
            model.fit(torch.as_tensor(X[start:start + 37]), torch.as_tensor(y[start:start + 37]))
    growing.fit(torch.as_tensor(X[0]), 1)
    declared.fit(torch.as_tensor(X[0]), 1)
    assert growing.num_classes == 7
    for name in ('muK', 'cK', 'Sigma', 'num_updates'):
        torch.testing.assert_close(getattr(growing, name), getattr(declared, name))
    test = torch.as_tensor(X[:9])
    torch.testing.assert_close(growing.decision_function(test), declared.decision_function(test))
    with pytest.raises(ValueError, match='label -1'):
        growing.fit(torch.as_tensor(X[:2]), torch.tensor([0, -1]))
    assert growing.num_classes == 7
    for rows, label in [(1, 2 ** 40), (10, 2 ** 40), (1, 2 ** 63 - 1), (10, 2 ** 62)]:
        # a stray label asks for more memory than there is: refused, nothing changed
        with pytest.raises(ValueError, match=rf'label {label}: a growing model would need .* GiB'):
            growing.fit(torch.as_tensor(X[:rows]), label if rows == 1 else torch.full((rows,), label))
    with pytest.raises(ValueError, match='a growing model would need'):
        growing.fit_base(torch.as_tensor(X[:10]), torch.full((10,), 2 ** 63 - 1))
    assert growing.num_classes == 7 and growing.muK.shape == (7, 5)
    reloaded = StreamingLDA(5, None, device='cpu', dtype=torch.float64)
    reloaded.load_state_dict(growing.state_dict())
    torch.testing.assert_close(reloaded.decision_function(test), declared.decision_function(test))


def test_a_run_records_the_oas_shrinkage_of_each_batch(tmp_path):
    save = tmp_path / 'out'
    assert run(['--num_classes', 4, '--shrinkage', 'oas', '--covariance_update', 'pooled', '--save_dir', save])[0] == 0
    rows = json.loads((save / 'summary.json').read_text())['increments']
    saved = json.loads((save / 'config.json').read_text())
    assert saved['covariance_detail'] == 'plastic (the exact pooled within-class covariance)'
    for row in rows:
        state = torch.load(save / f'slda_model_weights_min_trained_0_max_trained_{row["classes_seen"]}.pth',
                           weights_only=True)
        expected = oas_shrinkage(state['Sigma'], state['num_updates'])
        assert row['heads']['slda']['shrinkage'] == pytest.approx(expected) and 0 < expected < 1
