"""Open-set evaluation (--ood_classes N): the last N classes of the class order are never trained on; after every
batch, the test images of the classes seen so far (known) and all test images of the held-out classes (novel)
are scored for novelty two ways, and each score's AUROC (novel as the positive class) is reported:

- ``mahalanobis``: the smallest squared Mahalanobis distance to a seen class's mean under SLDA's shrunk shared
  covariance (``StreamingLDA.mahalanobis``; Lee et al., NeurIPS 2018, with LDA's shared covariance);
- ``msp``: the maximum softmax probability baseline (Hendrycks & Gimpel, ICLR 2017), negated, the softmax taken
  over the seen classes' SLDA scores.

AUROC is scikit-learn's ``roc_auc_score``: 0.5 is chance, 1 separates every novel image from every known one.
"""
import numpy as np
import torch

SCORES = ('mahalanobis', 'msp')


def novelty_scores(model, features):
    """{score name: (n,) float64 novelty, higher meaning more novel} of ``features`` (n, d) under ``model`` (a
    StreamingLDA), over the classes it has seen."""
    seen = (model.cK > 0).cpu()
    distances = model.mahalanobis(features)[:, seen]
    probabilities = torch.softmax(model.decision_function(features)[:, seen].double(), dim=1)
    return {'mahalanobis': distances.min(dim=1).values, 'msp': -probabilities.max(dim=1).values}


class OpenSetEvaluation:
    """Scores the known test images of each batch and the novel ones (``novel_indices``, test-split indices of
    the held-out classes) after it; ``evaluate`` returns (the batch's summary entry, the scores for its file)."""

    def __init__(self, novel_indices):
        self.novel_indices = np.asarray(novel_indices)

    def evaluate(self, model, test, batch):
        """(``{'novel_images', 'known_images', 'auroc': {score: value}}``, ``{score: (n,) float64, 'novel':
        (n,) bool}`` over the batch's test images then the novel ones); ``test`` is the test FeatureReader."""
        from sklearn.metrics import roc_auc_score     # here: importing scikit-learn takes seconds
        known, _ = test.take(batch.test_indices)
        novel, _ = test.take(self.novel_indices)
        scores = novelty_scores(model, torch.cat([known, novel]))
        is_novel = torch.cat([torch.zeros(len(known), dtype=torch.bool), torch.ones(len(novel), dtype=torch.bool)])
        entry = {'known_images': len(known), 'novel_images': len(novel),
                 'auroc': {name: float(roc_auc_score(is_novel.numpy(), scores[name].numpy())) for name in SCORES}}
        return entry, {**scores, 'novel': is_novel}
