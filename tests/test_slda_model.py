"""Tests of slda_model.py: StreamingLDA against independent oracles.

StreamingLDA against independent oracles: a per-sample loop written from the paper's equations,
scikit-learn's OAS and LinearDiscriminantAnalysis."""
import json
import os
import warnings

import numpy as np
import pytest
import torch
from sklearn.covariance import OAS
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

import slda_model
from conftest import run
from slda_model import StreamingLDA, prefix_sums

D, C = 12, 6
devices = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA'))]


def reference_stream(X, y, mu, c, sigma, t, plastic):
    """The paper's per-sample rule, one sample at a time, in float64 numpy."""
    mu, c, sigma = mu.copy(), c.copy(), sigma.copy()
    for z, k in zip(X, y):
        if plastic:
            r = z - mu[k]
            sigma = (t * sigma + (t / (t + 1)) * np.outer(r, r)) / (t + 1)
        mu[k] = mu[k] + (z - mu[k]) / (c[k] + 1)
        c[k] += 1
        t += 1
    return mu, c, sigma, t


def make_stream(n, seed, num_classes=C):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(num_classes, D))
    y = rng.integers(0, num_classes, size=n)
    X = centres[y] + rng.normal(size=(n, D)) * rng.uniform(0.5, 2, size=D)
    return X, y


def state(model):
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('device', devices)
@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize('plastic', [True, False])
@pytest.mark.parametrize('base_init', [True, False])
@pytest.mark.parametrize('batch_size', [1, 7, None])
def test_batched_fit_equals_per_sample_rule(device, dtype, rtol, plastic, base_init, batch_size):
    X, y = make_stream(300, seed=1)
    # Base data covers classes 0-2 only, so classes 3-5 first appear inside streamed batches.
    base = y < 3 if base_init else np.zeros(len(y), dtype=bool)
    stream_X, stream_y = X[~base], y[~base]
    model = StreamingLDA(D, C, streaming_update_sigma=plastic, device=device, dtype=dtype)
    mu, c, sigma, t = np.zeros((C, D)), np.zeros(C), np.eye(D), 0
    if base_init:
        model.fit_base(torch.from_numpy(X[base]), torch.from_numpy(y[base]))
        mu = model.muK.double().cpu().numpy()
        c = model.cK.double().cpu().numpy()
        sigma = model.Sigma.double().cpu().numpy()
        t = int(model.num_updates)
    mu, c, sigma, t = reference_stream(stream_X, stream_y, mu, c, sigma, t, plastic)
    step = batch_size or len(stream_y)
    for start in range(0, len(stream_y), step):
        model.fit(torch.from_numpy(stream_X[start:start + step]), torch.from_numpy(stream_y[start:start + step]))
    assert int(model.num_updates) == t == len(y)
    np.testing.assert_array_equal(model.cK.cpu().numpy(), c)
    np.testing.assert_allclose(model.muK.double().cpu().numpy(), mu, rtol=rtol, atol=rtol * np.abs(mu).max())
    np.testing.assert_allclose(model.Sigma.double().cpu().numpy(), sigma, rtol=rtol,
                               atol=rtol * np.abs(sigma).max())


def test_fit_split_into_internal_chunks_equals_per_sample_rule(monkeypatch):
    monkeypatch.setitem(slda_model.FIT_CHUNK_ROWS, 'cpu', 16)     # 300 rows: 19 chunks, classes span chunks
    X, y = make_stream(300, seed=17)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    model.fit(X, y)
    mu, c, sigma, t = reference_stream(X, y, np.zeros((C, D)), np.zeros(C), np.eye(D), 0, plastic=True)
    np.testing.assert_allclose(model.muK.numpy(), mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.Sigma.numpy(), sigma, rtol=1e-10, atol=1e-12)
    assert model.cK.tolist() == c.tolist() and int(model.num_updates) == t


@pytest.mark.parametrize('dtype,rtol', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize('plastic', [True, False])
def test_one_sample_per_call_equals_the_batched_fit_and_the_per_sample_rule(dtype, rtol, plastic):
    X, y = make_stream(300, seed=2)
    base = y < 3
    one_by_one = StreamingLDA(D, C, streaming_update_sigma=plastic, device='cpu', dtype=dtype)
    batched = StreamingLDA(D, C, streaming_update_sigma=plastic, device='cpu', dtype=dtype)
    for model in (one_by_one, batched):
        model.fit_base(X[base][:60], y[base][:60])
    stream_X, stream_y = X[~base | (np.cumsum(base) > 60)], y[~base | (np.cumsum(base) > 60)]
    for i, (z, k) in enumerate(zip(stream_X, stream_y)):       # a vector and a scalar label, or a few rows
        if i % 3:
            one_by_one.fit(torch.from_numpy(z), int(k))
        else:
            one_by_one.fit(stream_X[i:i + 1], stream_y[i:i + 1])
    batched.fit(stream_X, stream_y)
    mu, c, sigma, t = reference_stream(stream_X, stream_y, *batched_start(X[base][:60], y[base][:60], plastic),
                                       plastic)
    for model in (one_by_one, batched):
        assert int(model.num_updates) == t and model.cK.tolist() == c.tolist()
        np.testing.assert_allclose(model.muK.double().numpy(), mu, rtol=rtol, atol=rtol * np.abs(mu).max())
        np.testing.assert_allclose(model.Sigma.double().numpy(), sigma, rtol=rtol, atol=rtol * np.abs(sigma).max())


def batched_start(X, y, plastic):
    """(mu, c, Sigma, t) after fit_base in float64, the start of the reference stream."""
    model = StreamingLDA(D, C, streaming_update_sigma=plastic, device='cpu', dtype=torch.float64).fit_base(X, y)
    return model.muK.numpy(), model.cK.double().numpy(), model.Sigma.numpy(), int(model.num_updates)


@pytest.mark.parametrize('rows', [2, 4, 5])
def test_a_few_rows_per_call_equal_the_per_sample_rule(rows):
    X, y = make_stream(40, seed=21)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    for start in range(0, len(y), rows):
        assert model.fit(X[start:start + rows], y[start:start + rows]) is model
    mu, c, sigma, t = reference_stream(X, y, np.zeros((C, D)), np.zeros(C), np.eye(D), 0, plastic=True)
    np.testing.assert_allclose(model.muK.numpy(), mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.Sigma.numpy(), sigma, rtol=1e-12, atol=1e-12)
    assert model.cK.tolist() == c.tolist() and int(model.num_updates) == t


def test_first_sample_of_new_class_adds_uncentred_outer_product():
    # The paper's rule: a new class has mu = 0, so its first sample adds z z^T (weighted t / (t + 1)).
    model = StreamingLDA(2, 2, device='cpu', dtype=torch.float64)
    model.fit(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))      # t = 0: weight 0, Sigma = 0
    assert torch.equal(model.Sigma, torch.zeros(2, 2, dtype=torch.float64))
    model.fit(torch.tensor([[0.0, 2.0]]), torch.tensor([1]))      # t = 1: Sigma = (0 + 1/2 z z^T) / 2
    expected = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(model.Sigma, expected)


def test_fit_base_covariance_equals_sklearn_oas():
    X, y = make_stream(200, seed=3)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    model.fit_base(X, y)
    means = np.stack([X[y == k].mean(0) for k in range(C)])
    expected = OAS(assume_centered=True).fit(X - means[y]).covariance_
    np.testing.assert_allclose(model.Sigma.numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.muK.numpy(), means, rtol=1e-12)
    assert model.cK.tolist() == np.bincount(y, minlength=C).tolist()
    assert int(model.num_updates) == 200


def test_fit_base_replaces_previous_state():
    X, y = make_stream(100, seed=4)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    model.fit(X, y)
    model.fit_base(X[y < 2], y[y < 2])
    assert model.cK[2:].sum() == 0 and torch.all(model.muK[2:] == 0)
    assert int(model.num_updates) == int((y < 2).sum())


class FixedCovariance:
    """A scikit-learn covariance estimator that returns a given matrix whatever data it sees."""

    def __init__(self, covariance):
        self.covariance = covariance

    def get_params(self, deep=True):
        return {'covariance': self.covariance}

    def set_params(self, **params):
        self.covariance = params['covariance']
        return self

    def fit(self, X, y=None):
        self.covariance_ = self.covariance
        return self


@pytest.mark.parametrize('plastic', [True, False])
def test_predict_matches_sklearn_lda(plastic):
    X, y = make_stream(400, seed=5)
    Xtest, _ = make_stream(150, seed=6)
    model = StreamingLDA(D, C, shrinkage_param=1e-2, streaming_update_sigma=plastic, device='cpu',
                         dtype=torch.float64)
    model.fit_base(X[:100], y[:100])
    model.fit(X[100:], y[100:])
    eps = model.shrinkage_param
    shrunk = (1 - eps) * model.Sigma.numpy() + eps * np.eye(D)
    lda = LinearDiscriminantAnalysis(solver='lsqr', priors=np.full(C, 1 / C),
                                     covariance_estimator=FixedCovariance(shrunk)).fit(X, y)
    ours = model.predict(torch.from_numpy(Xtest)).numpy()
    theirs = lda.decision_function(Xtest)
    assert np.array_equal(ours.argmax(1), theirs.argmax(1))
    difference = ours - theirs                      # equal up to a per-sample constant
    np.testing.assert_allclose(difference - difference[:, :1], 0, atol=1e-8)
    probas = model.predict(torch.from_numpy(Xtest), return_probas=True).numpy()
    assert np.array_equal(model.decision_function(Xtest).numpy(), ours)
    assert np.array_equal(model.predict_proba(Xtest).numpy(), probas)
    np.testing.assert_allclose(probas, torch.softmax(torch.from_numpy(ours), dim=1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(probas, lda.predict_proba(Xtest), rtol=1e-6, atol=1e-12)


def test_identity_start_gives_nearest_class_mean():
    X, y = make_stream(300, seed=7)
    model = StreamingLDA(D, C, streaming_update_sigma=False, device='cpu', dtype=torch.float64)
    model.fit(X, y)
    assert torch.equal(model.Sigma, torch.eye(D, dtype=torch.float64))
    distances = ((X[:, None, :] - model.muK.numpy()[None]) ** 2).sum(-1)
    assert np.array_equal(model.predict(X).numpy().argmax(1), distances.argmin(1))


def test_predict_in_minibatches_equals_the_closed_form():
    X, y = make_stream(100, seed=8)
    model = StreamingLDA(D, C, test_batch_size=7, device='cpu', dtype=torch.float64)
    model.fit(X, y)
    eps, M = model.shrinkage_param, model.muK.numpy()
    precision = np.linalg.inv((1 - eps) * model.Sigma.numpy() + eps * np.eye(D))
    expected = X @ precision @ M.T - 0.5 * np.einsum('kd,de,ke->k', M, precision, M)
    scores = model.predict(X)
    assert scores.device.type == 'cpu'
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_mask_unseen_classes():
    X, y = make_stream(100, seed=9)
    seen = y < 4
    masked = StreamingLDA(D, C, mask_unseen_classes=True, device='cpu')
    plain = StreamingLDA(D, C, device='cpu')
    masked.fit(X[seen], y[seen])
    plain.fit(X[seen], y[seen])
    scores_masked, scores_plain = masked.predict(X), plain.predict(X)
    assert torch.isneginf(scores_masked[:, 4:]).all()
    assert torch.equal(scores_plain[:, 4:], torch.zeros_like(scores_plain[:, 4:]))   # mu = 0 scores 0
    assert torch.equal(scores_masked[:, :4], scores_plain[:, :4])


def test_precision_is_cached_and_invalidated_by_fit_and_load(tmp_path):
    X, y = make_stream(200, seed=10)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    model.fit(X[:100], y[:100])
    first = model.predict(X)
    model.fit(X[100:], y[100:])
    after_fit = model.predict(X)
    assert not torch.allclose(first, after_fit)
    fresh = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    fresh.fit(X, y)
    torch.testing.assert_close(after_fit, fresh.predict(X), rtol=1e-10, atol=1e-10)

    other = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    other.fit(X[:50], y[:50])
    other.save_model(str(tmp_path), 'other')
    model.load_model(str(tmp_path), 'other')
    assert torch.equal(model.predict(X), other.predict(X))
    model.load_state_dict(fresh.state_dict())
    assert torch.equal(model.predict(X), fresh.predict(X))


def test_save_load_round_trip_and_state_dict(tmp_path):
    X, y = make_stream(150, seed=11)
    model = StreamingLDA(D, C, device='cpu')
    model.fit(X, y)
    path = model.save_model(str(tmp_path), 'slda')
    assert path == os.path.join(str(tmp_path), 'slda.pth')
    saved = torch.load(path, weights_only=True)
    assert set(saved) == {'muK', 'cK', 'Sigma', 'num_updates'}
    assert isinstance(saved['num_updates'], int) and saved['cK'].dtype == torch.float32
    loaded = StreamingLDA(D, C, device='cpu')
    loaded.load_model(str(tmp_path), 'slda')
    # the original's format has no base_samples: a loaded model counts every sample as behind Sigma
    assert int(loaded.base_samples) == 150
    loaded.base_samples.zero_()
    assert_same_state(state(model), state(loaded))
    via_state_dict = StreamingLDA(D, C, device='cpu')
    via_state_dict.load_state_dict(model.state_dict())
    assert_same_state(state(model), state(via_state_dict))
    assert [f for f in os.listdir(tmp_path) if f.endswith('.tmp')] == []


@pytest.mark.parametrize('shrinkage', [1e-4, 'oas'])
@pytest.mark.parametrize('load', ['load_model', 'load_state_dict'])
def test_a_fixed_covariance_keeps_its_base_samples_through_save_and_load(tmp_path, load, shrinkage):
    # OAS shrinks a fixed covariance by the samples behind it (fit_base's), not by every sample streamed since;
    # a model saved with another shrinkage may be switched to OAS after loading
    X, y = make_stream(300, seed=21)
    model = StreamingLDA(D, C, device='cpu', streaming_update_sigma=False, shrinkage_param=shrinkage)
    model.fit_base(X[:60], y[:60]).fit(X[60:], y[60:])
    loaded = StreamingLDA(D, C, device='cpu', streaming_update_sigma=False, shrinkage_param=shrinkage)
    if load == 'load_model':
        model.save_model(str(tmp_path), 'slda')
        loaded.load_model(str(tmp_path), 'slda')
    else:
        loaded.load_state_dict(model.state_dict())
    assert int(loaded.base_samples) == 60 and int(loaded.num_updates) == 300
    model.shrinkage_param = loaded.shrinkage_param = 'oas'
    assert loaded.shrinkage_used == model.shrinkage_used
    assert torch.equal(loaded.predict(X), model.predict(X))


def test_a_model_file_loads_through_load_state_dict_as_through_load_model(tmp_path):
    # the original's format: num_updates a Python int, cK floats; torch's load copied muK, cK and Sigma, then
    # failed on num_updates, leaving num_updates no longer the sum of cK
    model = StreamingLDA(D, C, device='cpu').fit(*make_stream(90, seed=30))
    model.save_model(str(tmp_path), 'slda')
    via_file, via_state_dict = (StreamingLDA(D, C, device='cpu').fit(*make_stream(7, seed=31)) for _ in range(2))
    via_file.load_model(str(tmp_path), 'slda')
    via_state_dict.load_state_dict(torch.load(tmp_path / 'slda.pth', weights_only=True))
    assert_same_state(state(via_file), state(via_state_dict))
    assert int(via_state_dict.num_updates) == 90


@pytest.mark.parametrize('change', ['unexpected', 'missing'])
def test_a_state_dict_with_wrong_keys_is_refused_before_anything_changes(change):
    saved = StreamingLDA(D, C, device='cpu').fit(*make_stream(50, seed=32)).state_dict()
    if change == 'unexpected':
        saved['head.weight'] = torch.zeros(2)
    else:
        del saved['num_updates']
    model = StreamingLDA(D, C, device='cpu').fit(*make_stream(20, seed=33))
    before = state(model)
    with pytest.raises(ValueError, match="head.weight" if change == 'unexpected' else "missing keys \\['num_updates'\\]"):
        model.load_state_dict(saved)
    assert_same_state(before, state(model))
    if change == 'unexpected':
        model.load_state_dict(saved, strict=False)      # torch's non-strict loading: what matches is taken
        assert torch.equal(model.muK, saved['muK'])
    else:                                               # but never counts that do not add up
        with pytest.raises(ValueError, match="has \\['muK', 'cK', 'Sigma'\\] but not \\['num_updates'\\]"):
            model.load_state_dict(saved, strict=False)
        assert_same_state(before, state(model))


def test_a_state_dict_without_base_samples_loads_with_every_sample_behind_sigma():
    X, y = make_stream(100, seed=22)
    model = StreamingLDA(D, C, device='cpu').fit(X, y)
    older = {key: value for key, value in model.state_dict().items() if key != 'base_samples'}
    loaded = StreamingLDA(D, C, device='cpu')
    loaded.load_state_dict(older)
    assert int(loaded.base_samples) == 100
    assert torch.equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize('value', [-1, 101, 2.5, 'x', [3]])
def test_a_saved_base_samples_outside_zero_to_num_updates_is_refused_naming_it(tmp_path, value):
    X, y = make_stream(100, seed=23)
    saved = StreamingLDA(D, C, device='cpu').fit(X, y).checkpoint()
    torch.save({**saved, 'base_samples': value}, tmp_path / 'bad.pth')
    model = StreamingLDA(D, C, device='cpu')
    before = state(model)
    with pytest.raises(ValueError, match='base_samples must be a whole number of samples in \\[0, num_updates = 100\\]'):
        model.load_model(str(tmp_path), 'bad')
    assert_same_state(before, state(model))


def test_counts_beyond_float32s_exact_integers_are_saved_exactly(tmp_path):
    model = StreamingLDA(D, C, device='cpu').fit(*make_stream(50, seed=24))
    big = 2 ** 24 + 1                      # the first integer float32 cannot hold
    model.cK[0] += big - int(model.cK[0])
    model.num_updates.fill_(int(model.cK.sum()))
    saved = model.checkpoint()
    assert saved['cK'].dtype == torch.float64 and int(saved['cK'][0]) == big
    loaded = StreamingLDA(D, C, device='cpu')
    model.save_model(str(tmp_path), 'big')
    loaded.load_model(str(tmp_path), 'big')
    assert int(loaded.cK[0]) == big and int(loaded.num_updates) == int(model.num_updates)


def test_loads_checkpoint_in_original_format(tmp_path):
    # The original saved float32 tensors (cK as floats) and num_updates as a plain int.
    X, y = make_stream(80, seed=12)
    reference = StreamingLDA(D, C, device='cpu')
    reference.fit(X, y)
    original = {'muK': reference.muK.clone(), 'cK': reference.cK.float(), 'Sigma': reference.Sigma.clone(),
                'num_updates': 80}
    torch.save(original, tmp_path / 'orig.pth')
    model = StreamingLDA(D, C, device='cpu')
    model.load_model(str(tmp_path), 'orig')
    assert model.cK.dtype == torch.int64 and model.cK.tolist() == reference.cK.tolist()
    assert int(model.num_updates) == 80
    assert torch.equal(model.predict(X), reference.predict(X))


def test_load_rejects_wrong_shapes_and_keeps_state(tmp_path):
    small = StreamingLDA(D, C - 1, device='cpu')
    small.save_model(str(tmp_path), 'small')
    model = StreamingLDA(D, C, device='cpu')
    model.fit(*make_stream(30, seed=13))
    before = state(model)
    with pytest.raises(ValueError, match=r'muK has shape \(5, 12\)'):
        model.load_model(str(tmp_path), 'small')
    assert_same_state(before, state(model))
    with pytest.raises(FileNotFoundError, match='file not found'):
        model.load_model(str(tmp_path), 'missing')


class RunsCode:
    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_refuses_pickle_that_runs_code(tmp_path):
    marker = tmp_path / 'code_ran'
    evil = RunsCode()
    evil.marker = marker
    torch.save({'muK': evil, 'cK': 0, 'Sigma': 0, 'num_updates': 0}, tmp_path / 'evil.pth')
    model = StreamingLDA(D, C, device='cpu')
    with pytest.raises(ValueError, match='refusing to load .*evil.pth'):
        model.load_model(str(tmp_path), 'evil')
    assert not marker.exists()


@pytest.mark.parametrize('bad_x,bad_y,message', [
    (np.zeros((3, D + 1)), np.zeros(3, dtype=int), r'{x} must have shape \(n, 12\)'),
    (np.zeros((3, D)), np.array([0, C, 1]), r'y holds label 6, outside \[0, num_classes=6\)'),
    (np.zeros((3, D)), np.array([0, -1, 1]), r'y holds label -1, outside'),
    (np.array([[0.0] * D, [np.nan] * D, [0.0] * D]), np.zeros(3, dtype=int),
     '{x} contains NaN or infinite values \\(first in row 1\\)'),
    (np.full((3, D), np.inf), np.zeros(3, dtype=int), '{x} contains NaN or infinite'),
    # Finite in float64 but infinite once cast to the model's float32, and finite in float32 but large
    # enough for the covariance (squares of features, times the update count) to overflow.
    (np.array([[0.0] * D, [0.0] * D, [1e39] * D]), np.zeros(3, dtype=int),
     r'{x} has values beyond .* \(first in row 2\)'),
    (np.full((3, D), 1e20, dtype=np.float32), np.zeros(3, dtype=int), r'{x} has values beyond'),
    (np.zeros((3, D)), np.zeros(2, dtype=int), '{x} has 3 rows but y has 2 labels'),
    (np.zeros((3, D)), np.zeros(3), 'y must hold integer class labels'),
    (torch.zeros(3, D, dtype=torch.uint16), np.zeros(3, dtype=int),
     '{x} must be float16, bfloat16, float32, float64, int8, int16, int32, int64 or uint8, got dtype torch.uint16'),
    (torch.zeros(3, D).to(torch.float8_e4m3fn), np.zeros(3, dtype=int), '{x} must be float16, .* got dtype '
     'torch.float8_e4m3fn'),
])
@pytest.mark.parametrize('method', ['fit', 'fit_base', 'fit_per_sample_path', 'fit_batched_path'])
def test_rejected_input_leaves_model_unchanged(bad_x, bad_y, message, method, monkeypatch):
    model = StreamingLDA(D, C, device='cpu')
    model.fit_base(*make_stream(50, seed=14))
    model.predict(np.zeros((1, D)))
    before = state(model)
    if method != 'fit_base':     # 3 rows take the per-sample path by default; force one path or the other
        monkeypatch.setattr(slda_model, 'FIT_PER_SAMPLE_ROWS', 0 if method == 'fit_batched_path' else 3)
    with pytest.raises((ValueError, TypeError), match=message.format(x='X' if method == 'fit_base' else 'x')):
        getattr(model, 'fit_base' if method == 'fit_base' else 'fit')(bad_x, bad_y)
    assert_same_state(before, state(model))


@pytest.mark.parametrize('rows', [1, 10])
def test_a_uint64_label_beyond_int64_is_named_as_given(rows):
    model = StreamingLDA(D, C, device='cpu')
    labels = np.zeros(rows, dtype=np.uint64)
    labels[-1] = 2 ** 63 + 1
    with pytest.raises(ValueError, match=f'label {2 ** 63 + 1}, outside'):
        model.fit(np.zeros((rows, D)), labels)
    assert int(model.num_updates) == 0
    model.fit(np.zeros((rows, D)), np.full(rows, 2, dtype=np.uint32))
    assert int(model.cK[2]) == rows


@pytest.mark.parametrize('dtype', slda_model.FEATURE_INTEGER_DTYPES)
@pytest.mark.parametrize('rows', [3, 40])
def test_integer_features_fit_as_their_float_values(dtype, rows):
    X, y = make_stream(rows, seed=15)
    X = torch.as_tensor(X).clamp(0, 100).to(dtype)
    integer, floating = (StreamingLDA(D, C, device='cpu').fit(features, y) for features in (X, X.float()))
    assert_same_state(state(integer), state(floating))


@pytest.mark.parametrize('bad_x,message', [
    (np.array([[0.0] * D, [np.nan] * D]), r'X contains NaN or infinite values \(first in row 1\)'),
    (np.array([[0.0] * D, [1e39] * D]), r'X has values beyond .* \(first in row 1\)'),
    (np.full((2, D), 1e20, dtype=np.float32), r'X has values beyond'),
])
def test_predict_refuses_the_features_that_fit_refuses(bad_x, message):
    model = StreamingLDA(D, C, device='cpu').fit(*make_stream(50, seed=14))
    with pytest.raises(ValueError, match=message):
        model.predict(bad_x)


def test_predict_names_the_bad_row_counted_over_all_rows_not_within_its_block():
    model = StreamingLDA(D, C, device='cpu', test_batch_size=1024).fit(*make_stream(50, seed=14))
    X = torch.zeros(3000, D)
    X[2500, 1] = float('nan')
    with pytest.raises(ValueError, match=r'first in row 2500\)'):
        model.predict(X)
    X = X.double()
    X[2500, 1] = 1e39
    with pytest.raises(ValueError, match=r'first in row 2500\)'):
        model.predict(X)


def test_reversed_numpy_views_are_taken_as_their_values():
    X, y = make_stream(40, seed=16)
    X, y = np.asarray(X), np.asarray(y)
    reversed_view, copied = StreamingLDA(D, C, device='cpu'), StreamingLDA(D, C, device='cpu')
    reversed_view.fit(X[::-1], y[::-1])
    copied.fit(X[::-1].copy(), y[::-1].copy())
    assert_same_state(state(reversed_view), state(copied))
    assert torch.equal(reversed_view.predict(X[::-1]), copied.predict(X[::-1].copy()))
    reversed_view.fit(X[0, ::-1], int(y[0]))            # one sample, reversed columns
    copied.fit(X[0, ::-1].copy(), int(y[0]))
    assert_same_state(state(reversed_view), state(copied))
    # views with negative strides holding the same values: a reversed copy, reversed again as a view
    saved = {name: np.ascontiguousarray(value.numpy()[::-1])[::-1] if value.dim() else value
             for name, value in copied.state_dict().items()}
    assert saved['muK'].strides[0] < 0
    loaded = StreamingLDA(D, C, device='cpu')
    loaded.load_state_dict(saved)
    assert_same_state(state(loaded), state(copied))


def test_fit_and_fit_base_return_the_model():
    X, y = make_stream(30, seed=22)
    model = StreamingLDA(D, C, device='cpu')
    assert model.fit_base(X[:10], y[:10]) is model
    assert model.fit(X[10:], y[10:]) is model and model.fit(X[0], y[0]) is model
    assert model.fit(np.zeros((0, D)), np.zeros(0, dtype=int)) is model


def test_empty_batch_is_a_no_op():
    model = StreamingLDA(D, C, device='cpu')
    model.fit(*make_stream(20, seed=15))
    before = state(model)
    model.fit(np.zeros((0, D)), np.zeros(0, dtype=int))
    assert_same_state(before, state(model))
    with pytest.raises(ValueError, match='at least one sample'):
        model.fit_base(np.zeros((0, D)), np.zeros(0, dtype=int))


def test_not_positive_definite_falls_back_to_pseudo_inverse_and_warns_once():
    model = StreamingLDA(3, 2, shrinkage_param=0.0, device='cpu', dtype=torch.float64)
    model.fit(np.array([[1.0, 0, 0], [0, 1.0, 0]]), np.array([0, 1]))   # rank-deficient Sigma
    with pytest.warns(RuntimeWarning, match='not positive definite'):
        scores = model.predict(np.eye(3))
    W = torch.linalg.pinv(model.Sigma) @ model.muK.T
    expected = torch.eye(3, dtype=torch.float64) @ W - 0.5 * (model.muK.T * W).sum(0)
    torch.testing.assert_close(scores, expected)
    model.fit(np.array([[1.0, 1.0, 0]]), np.array([0]))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model.predict(np.eye(3))


def test_to_float64_moves_state_and_rebuilds_head():
    X, y = make_stream(60, seed=16)
    model = StreamingLDA(D, C, device='cpu')
    model.fit(X, y)
    scores32 = model.predict(X)
    model.to(torch.float64)   # nn.Module.to converts floating buffers only; counts stay int64
    assert model.muK.dtype == torch.float64 and model.cK.dtype == torch.int64
    torch.testing.assert_close(model.predict(X).float(), scores32, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('kwargs,message', [
    ({'input_shape': 0}, 'input_shape'), ({'num_classes': 0}, 'num_classes'),
    ({'shrinkage_param': 2.0}, 'shrinkage_param'), ({'dtype': torch.float16}, 'dtype'),
    ({'test_batch_size': 0}, 'test_batch_size'), ({'input_shape': 2.5}, 'input_shape'),
    ({'num_classes': '6'}, 'num_classes'), ({'shrinkage_param': 'small'}, 'shrinkage_param'),
    ({'input_shape': True}, 'input_shape'), ({'shrinkage_param': np.array([0.1, 0.2])}, 'shrinkage_param'),
])
def test_constructor_validates_arguments(kwargs, message):
    args = {'input_shape': D, 'num_classes': C, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        StreamingLDA(**args)


@pytest.mark.parametrize('n', [0, 1, 31, 32, 33, 64, 100, 2048])
def test_prefix_sums_equal_a_float64_running_sum(n):
    rows = torch.randn(n, 5, generator=torch.Generator().manual_seed(n)) * 1e3
    expected = np.concatenate([np.zeros((1, 5)), np.cumsum(rows.numpy().astype(np.float64), axis=0)])
    np.testing.assert_allclose(prefix_sums(rows).numpy(), expected, rtol=1e-13, atol=1e-9)


def test_float16_features_give_the_model_of_their_float32_values():
    generator = torch.Generator().manual_seed(3)
    X = (torch.randn(5000, 16, generator=generator) * 3).half()
    y = torch.randint(0, 4, (5000,), generator=generator)
    from_half, from_float = StreamingLDA(16, 4, device='cpu'), StreamingLDA(16, 4, device='cpu')
    from_half.fit_base(X[:500], y[:500])
    from_float.fit_base(X[:500].float(), y[:500])
    from_half.fit(X[500:], y[500:])
    from_float.fit(X[500:].float(), y[500:])
    for name in ('muK', 'cK', 'Sigma', 'num_updates'):
        assert torch.equal(getattr(from_half, name), getattr(from_float, name))
    assert torch.equal(from_half.predict(X[:100]), from_float.predict(X[:100].float()))
    with pytest.raises(ValueError, match='NaN or infinite'):
        from_half.fit(torch.full((3, 16), float('inf'), dtype=torch.float16), torch.zeros(3, dtype=torch.int64))


@pytest.mark.parametrize('rows', [1, 100])
def test_features_that_require_grad_leave_no_graph_in_the_state(rows):
    X = torch.randn(rows, D, requires_grad=True)
    model = StreamingLDA(D, C, device='cpu')
    model.fit(X * 2, torch.arange(rows) % C)
    for name, value in model.state_dict().items():
        assert not value.requires_grad and value.grad_fn is None, name


# ---------------------------------------------------------------- boundaries: what the model refuses, and why

def closed_form_scores(X, muK, Sigma, eps):
    """X W + b computed in numpy from the state, independently of the model's cached classifier."""
    M = np.asarray(muK, dtype=np.float64)
    precision = np.linalg.inv((1 - eps) * np.asarray(Sigma, dtype=np.float64) + eps * np.eye(len(Sigma)))
    return X @ precision @ M.T - 0.5 * np.einsum('kd,de,ke->k', M, precision, M)


@pytest.mark.parametrize('method', ['predict', 'predict_proba', 'decision_function'])
def test_predicting_before_any_fit_with_every_class_masked_raises(method):
    model = StreamingLDA(D, C, mask_unseen_classes=True, device='cpu')
    with pytest.raises(ValueError, match='mask_unseen_classes'):
        getattr(model, method)(np.zeros((2, D)))
    # Without masking every class has mu = 0 and scores 0, so the probabilities are uniform.
    plain = StreamingLDA(D, C, device='cpu')
    np.testing.assert_allclose(plain.predict_proba(np.ones((2, D))).numpy(), np.full((2, C), 1 / C), rtol=1e-6)


def saved_checkpoint(tmp_path, **changes):
    """A valid checkpoint of a model fitted on 80 samples, with ``changes`` applied; returns its save_name."""
    model = StreamingLDA(D, C, device='cpu')
    model.fit(*make_stream(80, seed=23, num_classes=C - 1))     # the last class stays unseen
    state_ = {**model.checkpoint(), **changes}
    torch.save(state_, tmp_path / 'changed.pth')
    return 'changed'


@pytest.mark.parametrize('num_updates', [80, 80.0, torch.tensor(80), torch.tensor(80.0)])
def test_load_accepts_num_updates_as_any_whole_number(tmp_path, num_updates):
    model = StreamingLDA(D, C, device='cpu')
    model.load_model(str(tmp_path), saved_checkpoint(tmp_path, num_updates=num_updates))
    assert int(model.num_updates) == 80 == int(model.cK.sum())


@pytest.mark.parametrize('changes,message', [
    ({'num_updates': -1}, 'num_updates'),
    ({'num_updates': 80.5}, 'num_updates'),
    ({'num_updates': 79}, 'num_updates'),              # not the sum of the class counts
    ({'num_updates': 81}, 'num_updates'),
    ({'num_updates': True}, 'num_updates'),
    ({'num_updates': 'eighty'}, 'num_updates'),
    ({'num_updates': torch.tensor([80])}, 'num_updates'),
    ({'cK': torch.full((C,), float('inf'))}, 'cK'),
    ({'muK': torch.ones(C, D)}, 'muK'),                # an unseen class (count 0) with a non-zero mean
    ({'muK': torch.full((C, D), 1e39, dtype=torch.float64)}, 'muK'),     # infinite once cast to float32
    ({'Sigma': torch.full((D, D), 1e37)}, 'Sigma'),     # finite, but a later fit's t * Sigma overflows
    ({'Sigma': torch.triu(torch.ones(D, D))}, 'Sigma'),  # not symmetric
    ({'Sigma': torch.eye(D, dtype=torch.complex64)}, 'Sigma'),
])
@pytest.mark.parametrize('loader', ['load_model', 'load_state_dict'])
def test_load_rejects_inconsistent_state_and_keeps_the_model(tmp_path, changes, message, loader):
    name = saved_checkpoint(tmp_path, **changes)
    model = StreamingLDA(D, C, device='cpu')
    model.fit(*make_stream(30, seed=13))
    before = state(model)
    with pytest.raises(ValueError, match=message):
        if loader == 'load_model':
            model.load_model(str(tmp_path), name)
        else:
            checkpoint = torch.load(tmp_path / f'{name}.pth', weights_only=False)
            model.load_state_dict({key: torch.as_tensor(value) if key != 'num_updates' or
                                   not isinstance(value, str) else value for key, value in checkpoint.items()})
    assert_same_state(before, state(model))


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_features_at_the_limit_train_and_predict_finitely(dtype):
    limit = slda_model.feature_limit(dtype)
    signs = np.where(np.random.default_rng(24).random((400, D)) < 0.5, -1.0, 1.0)
    y = np.arange(400) % C
    model = StreamingLDA(D, C, device='cpu', dtype=dtype)
    model.fit(signs[:200] * limit, y[:200])
    for row, label in zip(signs[200:210] * limit, y[200:210]):
        model.fit(row, label)
    model.fit(signs[210:] * limit, y[210:])
    assert torch.isfinite(model.Sigma).all() and torch.isfinite(model.muK).all()
    assert torch.isfinite(model.predict_proba(signs[:50] * limit)).all()
    assert torch.isfinite(StreamingLDA(D, C, device='cpu', dtype=dtype).fit_base(signs * limit, y).Sigma).all()


def edit_sigma_in_place(model):
    model.Sigma.mul_(3.0)


def edit_mean_in_place(model):
    model.muK[1] += 2.0


def assign_sigma(model):
    model.Sigma = torch.diag(torch.linspace(0.5, 4.0, D, dtype=model.dtype))


def assign_means(model):
    model.muK = model.muK.flip(0).clone()


def change_shrinkage(model):
    model.shrinkage_param = 0.3


@pytest.mark.parametrize('edit', [edit_sigma_in_place, edit_mean_in_place, assign_sigma, assign_means,
                                  change_shrinkage])
def test_cached_classifier_follows_every_change_of_the_state(edit):
    X, y = make_stream(120, seed=25)
    model = StreamingLDA(D, C, device='cpu', dtype=torch.float64)
    model.fit(X, y)
    model.predict(X)                       # builds the cached classifier
    edit(model)
    expected = closed_form_scores(X, model.muK.numpy(), model.Sigma.numpy(), model.shrinkage_param)
    np.testing.assert_allclose(model.predict(X).numpy(), expected, rtol=1e-9, atol=1e-9)


def test_a_model_made_under_inference_mode_predicts_from_its_current_state():
    X, y = make_stream(120, seed=26)
    with torch.inference_mode():       # its buffers are inference tensors, which have no version counter
        model = StreamingLDA(D, C, device='cpu', dtype=torch.float64).fit(X[:60], y[:60])
        model.predict(X)
        model.fit(X[60:], y[60:])
        scores = model.predict(X)
    expected = closed_form_scores(X, model.muK.numpy(), model.Sigma.numpy(), model.shrinkage_param)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('name,value,error', [
    ('shrinkage_param', 1.5, ValueError), ('shrinkage_param', float('nan'), ValueError),
    ('shrinkage_param', 'small', TypeError), ('test_batch_size', 0, ValueError),
    ('test_batch_size', 2.5, TypeError),
])
def test_setting_an_invalid_hyperparameter_after_construction_raises(name, value, error):
    model = StreamingLDA(D, C, device='cpu')
    previous = getattr(model, name)
    with pytest.raises(error, match=name):
        setattr(model, name, value)
    assert getattr(model, name) == previous


def test_an_empty_label_list_is_a_no_op():
    model = StreamingLDA(D, C, device='cpu')
    model.fit(*make_stream(20, seed=15))
    before = state(model)
    assert model.fit(np.zeros((0, D)), []) is model
    assert_same_state(before, state(model))
    with pytest.raises(ValueError, match='at least one sample'):
        model.fit_base(np.zeros((0, D)), [])


@pytest.mark.parametrize('device', [
    'nonsense', 'meta',
    pytest.param('mps', marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason='MPS is available')),
    pytest.param('cuda', marks=pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available')),
    pytest.param('cuda:99', marks=pytest.mark.skipif(torch.cuda.device_count() > 99, reason='100 GPUs')),
])
def test_an_unusable_device_is_refused_by_name(device):
    with pytest.raises(ValueError, match=f"device='{device}'"):
        StreamingLDA(D, C, device=device)


def test_a_scalar_is_not_a_sample_even_for_a_one_dimensional_model():
    model = StreamingLDA(1, 3, device='cpu')
    model.fit(np.array([[1.0], [2.0]]), [0, 1])
    before = state(model)
    with pytest.raises(ValueError, match=r'x must have shape \(n, 1\) or \(1,\), got \(\)'):
        model.fit(3.0, 0)
    assert_same_state(before, state(model))
    model.fit(np.array([3.0]), 0)          # a (1,) vector is one sample
    assert model.cK.tolist() == [2, 1, 0]


@pytest.mark.parametrize('x,y,error,message', [
    ('features', 0, TypeError, 'x must be'),
    ([[1.0] * D, [1.0]], [0, 1], TypeError, 'x must be'),
    (np.zeros((2, D)), [[0], [1, 2]], TypeError, 'y must be'),
    (np.zeros((2, D)), ['a', 'b'], TypeError, 'y must be'),
])
def test_inputs_that_are_not_arrays_of_numbers_are_refused_by_name(x, y, error, message):
    model = StreamingLDA(D, C, device='cpu')
    with pytest.raises(error, match=message):
        model.fit(x, y)
    with pytest.raises(error, match=message.replace('x ', 'X ')):
        model.fit_base(x, y)


def test_no_base_init_with_fixed_covariance_keeps_the_identity(tmp_path, capsys):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 4, '--no_base_init', '--no-streaming_update_sigma', '--save_dir', save], capsys)
    assert code == 0, out.err
    weights = torch.load(save / 'slda_model_weights_final.pth', weights_only=True)
    assert torch.equal(weights['Sigma'], torch.eye(512))
    summary = json.loads((save / 'summary.json').read_text())
    assert [row['classes_seen'] for row in summary['increments']] == [2, 4]
    assert weights['num_updates'] == sum(row['train_images'] for row in summary['increments'])
    code, out = run(['--no_base_init', '--base_init_classes', 2, '--save_dir', tmp_path / 'x'], capsys)
    assert code == 2 and 'contradict' in out.err


# ---------------------------------------------------------------- the fast paths against independent computations

@pytest.mark.parametrize('grouped', [False, True])
def test_fixed_covariance_batch_split_into_chunks_equals_the_per_sample_rule(monkeypatch, grouped):
    """Blocks of 16 rows: classes span blocks, in class-sorted order (a shuffled stream) or in stream order
    (each class's rows together, classes not in label order, as a class-incremental batch)."""
    monkeypatch.setitem(slda_model.FIT_CHUNK_ROWS, 'cpu', 16)      # 300 rows: 19 chunks through the buffers
    X, y = make_stream(300, seed=27)
    if grouped:
        by_class = np.argsort(np.array([3, 0, 5, 1, 4, 2])[y], kind='stable')
        X, y = X[by_class], y[by_class]
    model = StreamingLDA(D, C, streaming_update_sigma=False, device='cpu', dtype=torch.float64)
    model.fit_base(X[:40], y[:40])
    sigma = model.Sigma.clone()
    mu, c, _, t = reference_stream(X[40:], y[40:], model.muK.numpy(), model.cK.double().numpy(), sigma.numpy(),
                                   40, plastic=False)
    model.fit(X[40:], y[40:])
    np.testing.assert_allclose(model.muK.numpy(), mu, rtol=1e-12, atol=1e-12)
    assert torch.equal(model.Sigma, sigma) and model.cK.tolist() == c.tolist() and int(model.num_updates) == t


@pytest.mark.parametrize('mask', [False, True])
@pytest.mark.parametrize('seen_classes', [3, 20, 40])          # padded to 16 columns, 20 of them, all
def test_scores_of_seen_classes_equal_the_closed_form_and_unseen_ones_are_exact(mask, seen_classes):
    classes, generator = 40, torch.Generator().manual_seed(28)
    X = torch.randn(200, D, dtype=torch.float64, generator=generator) * 3
    y = torch.randperm(classes, generator=generator)[:seen_classes][torch.arange(200) % seen_classes]
    model = StreamingLDA(D, classes, test_batch_size=64, mask_unseen_classes=mask, device='cpu',
                         dtype=torch.float64).fit(X, y)
    scores, probas = model.predict(X[:100]), model.predict_proba(X[:100])
    expected = closed_form_scores(X[:100].numpy(), model.muK.numpy(), model.Sigma.numpy(), model.shrinkage_param)
    unseen = (model.cK == 0).numpy()
    expected[:, unseen] = -np.inf if mask else 0.0
    np.testing.assert_allclose(scores[:, ~unseen].numpy(), expected[:, ~unseen], rtol=1e-9, atol=1e-9)
    assert torch.equal(scores[:, unseen], torch.from_numpy(expected[:, unseen]))
    np.testing.assert_allclose(probas.numpy(), torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-12)


VIEWS_OF_THE_STATE = {   # rows that lie in the model's own memory, and their labels
    'all means, batched': (lambda model: model.muK, torch.arange(C - 1, -1, -1)),
    # row i is the mean of class i + 1: class 1's mean changes before the row holding it is read
    'NumPy view at an offset, batched': (lambda model: torch.from_numpy(model.muK.numpy()[1:]),
                                         torch.tensor([5, 1, 2, 3, 0])),
    'two means, one row at a time': (lambda model: model.muK[1:3], torch.tensor([2, 1])),
    'a row of Sigma, one sample': (lambda model: model.Sigma[0], 2),
}


@pytest.mark.parametrize('view', VIEWS_OF_THE_STATE)
@pytest.mark.parametrize('covariance', ['plastic', 'fixed', 'pooled'])
def test_a_batch_that_is_a_view_of_the_model_state_is_read_as_given(monkeypatch, covariance, view):
    """fit(model.muK, ...) updates muK in steps while it reads the batch: the rows must be the means as given."""
    monkeypatch.setattr(slda_model, 'FIT_SUM_BYTES', 8 * D * 4)         # 4 rows per block: classes finish early
    monkeypatch.setitem(slda_model.FIT_CHUNK_ROWS, 'cpu', 4)
    X, y = make_stream(60, seed=31)
    settings = {'streaming_update_sigma': covariance != 'fixed',
                'covariance_update': 'pooled' if covariance == 'pooled' else 'paper'}
    aliased, copied = (StreamingLDA(D, C, device='cpu', dtype=torch.float64, **settings).fit(X, y) for _ in range(2))
    rows_of, labels = VIEWS_OF_THE_STATE[view]
    aliased.fit(rows_of(aliased), labels)
    copied.fit(rows_of(copied).clone(), labels)
    assert_same_state(state(aliased), state(copied))
