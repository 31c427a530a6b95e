"""Open-set scores: StreamingLDA.mahalanobis against a direct computation."""
import math

import numpy as np
import pytest
import torch

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
