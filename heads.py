"""Baseline output layers, fitted beside SLDA on the same features in the same stream order, to show what
SLDA's accuracy is worth on those features:

- ``NearestClassMean``: the class means SLDA keeps, Euclidean distance: what the shared covariance adds;
- ``SoftmaxStream``: a softmax layer trained by one pass of SGD over the stream, no replay: the paper's
  lower bound for an output layer trained incrementally;
- ``OfflineSoftmax``: after each batch, a softmax layer trained to convergence on every training feature so
  far: the upper bound for an output layer on these features.

Each has ``fit(X, y)`` (a batch of the stream, in order), ``fit_base(X, y)`` (a base initialisation batch; the
same as ``fit`` for the baselines), ``decision_function(X)`` (scores (n, C) on the CPU) and ``samples_seen``.

``HEADS`` is the registry of output layers, SLDA's included: each entry declares the options it takes (their
flags come with them) and builds the layer. Adding an output layer is a class like these and an entry.
"""
import argparse
from dataclasses import dataclass
from typing import Callable

import torch

from errors import InputError
from options import Settings, at_least, fraction, option, positive
from slda_model import COVARIANCE_UPDATES, StreamingLDA


class BaselineState:
    """``state_dict``/``load_state_dict`` of a baseline output layer: ``samples_seen`` and the tensors named in
    ``tensors``, saved with every batch so that ``--resume`` continues the layer."""
    tensors = ()

    def state_dict(self):
        """A CPU copy of the state, unaffected by later updates: the writer saves it in the background while the
        next batch trains the layer in place."""
        return {'samples_seen': torch.tensor(self.samples_seen),
                **{name: getattr(self, name).to('cpu', copy=True) for name in self.tensors}}

    def load_state_dict(self, state, replay):
        """Take ``state`` (from ``state_dict``); ``replay()`` yields the (X, y) batches fitted before it, for a
        layer that keeps them."""
        self.samples_seen = int(state['samples_seen'])
        for name in self.tensors:
            setattr(self, name, state[name].to(getattr(self, name).device))


class NearestClassMean(BaselineState):
    """Scores -||x - mu_k||^2 with the means of ``slda`` (a StreamingLDA, exact and streaming); classes with no
    sample yet score -inf."""

    def __init__(self, slda, test_batch_size=1024):
        self.slda = slda
        self.test_batch_size = test_batch_size
        self.samples_seen = 0

    def fit(self, X, y):
        self.samples_seen += len(y)        # the means are SLDA's, updated by its own fit

    fit_base = fit

    @torch.no_grad()
    def decision_function(self, X):
        means = self.slda.muK.double()
        unseen = self.slda.cK == 0
        out = []
        for start in range(0, len(X), self.test_batch_size):
            rows = X[start:start + self.test_batch_size].to(means.device, torch.float64)
            scores = -torch.cdist(rows, means).pow(2)
            out.append(scores.masked_fill(unseen, float('-inf')).float().cpu())
        return torch.cat(out)


class SoftmaxStream(BaselineState):
    """A linear softmax layer (weights start at zero) trained by plain SGD on the cross-entropy, ``batch_size``
    samples per step (1: one sample at a time), each sample once, learning rate ``lr``."""

    def __init__(self, dim, num_classes, lr=0.01, batch_size=1, device='cpu'):
        if lr <= 0 or batch_size < 1:
            raise InputError(f'lr must be positive and batch_size at least 1, got {lr} and {batch_size}')
        self.weight = torch.zeros(num_classes, dim, device=device)
        self.bias = torch.zeros(num_classes, device=device)
        self.lr, self.batch_size = lr, batch_size
        self.samples_seen = 0

    tensors = ('weight', 'bias')

    @torch.no_grad()
    def fit(self, X, y):
        for start in range(0, len(y), self.batch_size):
            rows = X[start:start + self.batch_size].to(self.weight.device, torch.float32)
            labels = y[start:start + self.batch_size].to(self.weight.device)
            # gradient of the mean cross-entropy: (softmax - one-hot) per row
            error = torch.softmax(rows @ self.weight.T + self.bias, dim=1)
            error[torch.arange(len(labels)), labels] -= 1
            self.weight -= self.lr * error.T @ rows / len(labels)
            self.bias -= self.lr * error.mean(dim=0)
        self.samples_seen += len(y)

    fit_base = fit

    @torch.no_grad()
    def decision_function(self, X):
        return (X.to(self.weight.device, torch.float32) @ self.weight.T + self.bias).cpu()


class OfflineSoftmax(BaselineState):
    """After every ``fit``, a linear softmax layer trained on all features given so far by full-batch L-BFGS
    (strong Wolfe line search, warm-started from the previous solution) on the cross-entropy plus
    ``l2 / 2 * ||W||^2``, until the gradient or the change falls below L-BFGS's tolerances or ``max_iter``
    iterations pass."""

    def __init__(self, dim, num_classes, device='cpu', l2=1e-4, max_iter=500):
        self.weight = torch.zeros(num_classes, dim, device=device)
        self.bias = torch.zeros(num_classes, device=device)
        self.l2, self.max_iter = l2, max_iter
        self.features, self.labels = [], []
        self.samples_seen = 0

    tensors = ('weight', 'bias')

    def load_state_dict(self, state, replay):
        super().load_state_dict(state, replay)
        for X, y in replay():           # the features it trains on are the stream's, read again, not saved
            self.features.append(X.to(self.weight.device, torch.float32))
            self.labels.append(y.to(self.weight.device))

    def fit(self, X, y):
        self.features.append(X.to(self.weight.device, torch.float32))
        self.labels.append(y.to(self.weight.device))
        self.samples_seen += len(y)
        X, y = torch.cat(self.features), torch.cat(self.labels)
        weight = self.weight.clone().requires_grad_()
        bias = self.bias.clone().requires_grad_()
        optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=self.max_iter, history_size=20,
                                      tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn='strong_wolfe')

        def loss():
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(X @ weight.T + bias, y) + self.l2 / 2 * weight.pow(2).sum()
            value.backward()
            return value

        optimizer.step(loss)
        self.weight, self.bias = weight.detach(), bias.detach()

    fit_base = fit

    @torch.no_grad()
    def decision_function(self, X):
        return (X.to(self.weight.device, torch.float32) @ self.weight.T + self.bias).cpu()


@dataclass(frozen=True)
class NoOptions(Settings):
    """An output layer without options of its own."""


def number_or_oas(text):
    """--shrinkage's text: 'oas' (any case), or a number."""
    if text.lower() == 'oas':
        return 'oas'
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a number in [0, 1] or oas, got {text!r}') from None


@dataclass(frozen=True)
class SLDAOptions(Settings):
    plastic_covariance: bool = option(
        True, 'plastic covariance, updated by every sample; --no-streaming_update_sigma keeps the base '
              'initialisation\'s covariance fixed (default: the dataset\'s: fixed for imagenet, as in the '
              'original, plastic elsewhere)', flags=('--streaming_update_sigma',),
        off_flags=('--no-streaming_update_sigma',))
    shrinkage: object = option(1e-4, 'covariance shrinkage: a number in [0, 1], or oas for the Oracle Approximating '
                                     'Shrinkage of the current covariance at every rebuild of the classifier (the value '
                                     'used is in summary.json)', metavar='EPS', parse=number_or_oas,
                               check=lambda value: None if value == 'oas' else fraction(value))
    covariance_update: str = option('paper', 'how the covariance learns: paper, the paper\'s rule; pooled, the exact '
                                             'pooled within-class covariance, whatever the order of the stream',
                                    choices=COVARIANCE_UPDATES)
    mask_unseen_classes: bool = option(False, 'give classes not seen yet a score of -inf (the paper does not)')
    slda_dtype: str = option('float32', 'precision of the SLDA state', choices=('float32', 'float64'))

    @property
    def covariance(self):
        return 'plastic' if self.plastic_covariance else 'fixed'


@dataclass(frozen=True)
class SoftmaxStreamOptions(Settings):
    softmax_lr: float = option(0.01, 'softmax_stream: SGD learning rate', metavar='LR', check=positive)
    softmax_batch_size: int = option(1, 'softmax_stream: samples per SGD step (1: one at a time)', metavar='N',
                                     check=at_least(1))


@dataclass(frozen=True)
class HeadEntry:
    name: str
    help: str
    build: Callable        # (options, slda, feature_dim, num_classes, device) -> the output layer
    options: type = NoOptions


def build_slda(options, slda, feature_dim, num_classes, device):
    return StreamingLDA(feature_dim, num_classes, shrinkage_param=options.shrinkage,
                        streaming_update_sigma=options.plastic_covariance, device=device,
                        dtype=getattr(torch, options.slda_dtype), mask_unseen_classes=options.mask_unseen_classes,
                        covariance_update=options.covariance_update)


HEADS = {entry.name: entry for entry in [
    HeadEntry('slda', 'streaming LDA, always fitted', build_slda, SLDAOptions),
    HeadEntry('ncm', 'nearest class mean', lambda options, slda, *_: NearestClassMean(slda)),
    HeadEntry('softmax_stream', 'one pass of SGD', lambda options, slda, dim, classes, device: SoftmaxStream(
        dim, classes, options.softmax_lr, options.softmax_batch_size, device), SoftmaxStreamOptions),
    HeadEntry('offline', 'softmax trained to convergence on all features so far, after each batch',
              lambda options, slda, dim, classes, device: OfflineSoftmax(dim, classes, device)),
]}
