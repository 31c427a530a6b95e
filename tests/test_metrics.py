"""What a run's accuracies measure (DESIGN.md section 9): top-k ranked by scores, never by float32 softmax
probabilities, with ties among scores counted against the label; and a fixed covariance without a base
initialisation, which is nearest class mean and is reported as such."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import run
from experiment import fit_and_evaluate
from protocol import Batch
from slda_model import StreamingLDA
from utils import topk_accuracy

CLASSES = 20


def topk_by_definition(scores, labels, k):
    """Percent of rows whose label is among the top k, written from the definition: a row is a hit when fewer than
    k other classes score at least as high as its label (a NaN anywhere in the comparison counts against it)."""
    hits = 0
    for row, label in zip(scores.tolist(), labels.tolist()):
        ahead = sum(1 for j, score in enumerate(row)
                    if j != label and (score >= row[label] or math.isnan(score) or math.isnan(row[label])))
        hits += ahead < k
    return 100 * hits / len(labels)


def test_topk_accuracy_equals_a_loop_from_the_definition_ties_included():
    rng = np.random.default_rng(0)
    scores = torch.from_numpy(rng.integers(0, 4, size=(300, 7)).astype(np.float32))   # ties on most rows
    scores[0, 2] = float('nan')
    scores[1] = float('-inf')       # every class tied at -inf, the masked score of unseen classes
    scores[2, 5] = float('inf')
    labels = torch.from_numpy(rng.integers(0, 7, size=300))
    labels[0] = 2
    ks = (1, 2, 5, 7, 9)
    assert topk_accuracy(scores, labels, ks) == [topk_by_definition(scores, labels, k) for k in ks]
    # the definition's answer in two cases it is easy to see: a row tied everywhere is a hit only once k covers
    # every class; a label whose score is alone at the top is a hit at k = 1
    assert topk_accuracy(scores[1:2], labels[1:2], (1, 6, 7)) == [0.0, 0.0, 100.0]
    assert topk_accuracy(scores[2:3], torch.tensor([5]), (1,)) == [100.0]


@pytest.mark.parametrize('scores, labels, message', [
    (torch.zeros(3), torch.zeros(3, dtype=torch.int64), 'scores'),
    (torch.zeros(3, 4), torch.zeros(2, dtype=torch.int64), 'labels'),
    (torch.zeros(2, 4), torch.tensor([0, 4]), 'labels'),
    (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 'no rows'),
])
def test_topk_accuracy_rejects_inputs_it_cannot_rank(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        topk_accuracy(scores, labels)


def second_by_score_data(seed=0, train_per_class=50, test_per_class=5, spread=0.01):
    """Twenty 2-d Gaussian classes (standard deviation ``spread``) whose means lie one unit apart on a circle; the
    test points of class k lie 0.6 of the way to the mean of class k + 1, so the true class is second by score.
    Returns (X_train, y_train, X_test, y_test)."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(CLASSES) / CLASSES
    means = np.stack([np.cos(angles), np.sin(angles)], axis=1) / (2 * np.sin(np.pi / CLASSES))
    y_train = np.repeat(np.arange(CLASSES), train_per_class)
    X_train = means[y_train] + spread * rng.standard_normal((len(y_train), 2))
    y_test = np.repeat(np.arange(CLASSES), test_per_class)
    X_test = means[y_test] + 0.6 * (means[(y_test + 1) % CLASSES] - means[y_test]) + \
        spread * rng.standard_normal((len(y_test), 2))
    return [torch.as_tensor(a, dtype=torch.float32 if a.dtype == np.float64 else torch.int64)
            for a in (X_train, y_train, X_test, y_test)]


def test_true_class_second_by_score_is_always_in_the_top_5_though_probabilities_tie_at_zero():
    X, y, X_test, y_test = second_by_score_data()
    model = StreamingLDA(2, CLASSES, device='cpu')
    model.fit_base(X, y)
    scores = model.decision_function(X_test)
    rank = (scores > scores.gather(1, y_test.view(-1, 1))).sum(dim=1)
    assert rank.tolist() == [1] * len(y_test)          # the construction holds: one class above the label
    assert topk_accuracy(scores, y_test) == [0.0, 100.0]
    # float32 softmax: the labels' probabilities are exactly 0, tied with 18 other classes, so a ranking of the
    # probabilities is left to how topk breaks ties and misses most labels
    probabilities = model.predict_proba(X_test)
    assert ((probabilities > 0).sum(dim=1) == 1).all()
    assert (probabilities.gather(1, y_test.view(-1, 1)) == 0).all()
    assert topk_accuracy(probabilities, y_test)[1] < 100


class Reader:
    """The part of features.py's readers that fit_and_evaluate uses, over tensors in memory."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def take(self, indices):
        return self.X[indices], self.y[indices]

    def prefetch(self, indices):
        pass


def test_the_driver_ranks_by_scores_and_still_returns_the_probabilities():
    X, y, X_test, y_test = second_by_score_data()
    batch = Batch(1, np.arange(len(y)), np.arange(len(y_test)), CLASSES, 'min_trained_0_max_trained_20',
                  base_init=True)
    heads = {'slda': StreamingLDA(2, CLASSES, device='cpu')}
    row, probabilities = fit_and_evaluate(heads, batch, None, Reader(X, y), Reader(X_test, y_test),
                                          torch.device('cpu'))
    assert (row['heads']['slda']['top1'], row['heads']['slda']['top5']) == (0.0, 100.0)
    assert torch.equal(probabilities, heads['slda'].predict_proba(X_test))


@pytest.mark.parametrize('flags, covariance, detail', [
    (['--no_base_init', '--no-streaming_update_sigma'], 'fixed',
     'fixed (identity: no base initialisation, so nearest class mean)'),
    (['--no-streaming_update_sigma'], 'fixed', "fixed (the base initialisation's estimate, kept)"),
    (['--no_base_init', '--streaming_update_sigma'], 'plastic', 'plastic (updated by every sample)'),
])
def test_the_run_says_what_its_covariance_is(tmp_path, capsys, flags, covariance, detail):
    save = tmp_path / 'out'
    code, out = run(['--num_classes', 6, '--heads', 'slda,ncm', '--save_dir', save] + flags, capsys)
    assert code == 0, out.err
    config = json.loads((save / 'config.json').read_text())
    assert (config['covariance'], config['covariance_detail']) == (covariance, detail)
    assert f'covariance: {detail};' in out.out
    rows = json.loads((save / 'summary.json').read_text())['increments']
    same = [(row['heads']['slda']['top1'], row['heads']['slda']['top5']) ==
            (row['heads']['ncm']['top1'], row['heads']['ncm']['top5']) for row in rows]
    # the identity covariance makes SLDA's scores -||x - mu_k||^2 / 2 plus a term common to every class
    assert all(same) if 'nearest class mean' in detail else not all(same)
