"""The metrics of continual-learning papers, computed from what every batch of a run records (experiment.py's
rows: per class, the test images evaluated after the batch and each output layer's top-1 hits among them).

With T batches (numbered from 0 here, from 1 in the files), accuracies in percent:

- the accuracy matrix A (T x T): A[i][j], for j <= i, the top-1 accuracy after batch i on the test images of the
  classes first fitted in batch j; undefined (None) for j > i and where batch i tested no image of those classes;
- average incremental accuracy: the mean over batches of the accuracy after each batch on the test images it is
  evaluated on (the seen classes', or all of them), top-1 and top-5 (Rebuffi et al. 2017, iCaRL);
- last accuracy: the last batch's, top-1 and top-5;
- average forgetting (Chaudhry et al. 2018, "Riemannian Walk for Incremental Learning"): the mean over
  j < T - 1 of f_j = max over l in j .. T - 2 of A[l][j], minus A[T - 1][j] (percentage points);
- backward transfer (Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning"): the mean over
  j < T - 1 of A[T - 1][j] - A[j][j] (percentage points; negative when learning later batches cost accuracy);
- per class: the final top-1; for the orderings tested on every class after every batch (iid, instance), whose
  batches are not batches of classes, the top-1 of each class after each batch and its forgetting, the largest
  accuracy on the class after the batch that first fitted it and before the last, minus the final one.

A mean leaves out the terms that are undefined (a class group with no test image); a mean of no term, as with
a single batch, is None.
"""
import numpy as np


def first_batches(plan, train_labels, num_classes):
    """(C,) int64: the index (from 0) of the batch of ``plan`` (protocol.Batch list) that first fits each class, -1
    for classes never fitted; ``train_labels`` (n,) are the training split's labels."""
    first = np.full(num_classes, -1, dtype=np.int64)
    for i in reversed(range(len(plan))):
        first[np.unique(train_labels[plan[i].train_indices])] = i
    return first


def class_counts(rows, head):
    """(tested, hits), each (T, C) float64: the test images of each class evaluated after each batch of ``rows``
    (experiment.py's summary rows) and ``head``'s top-1 hits among them; None when a row lacks the per-class
    counts (batches written by a release before them, continued with --resume)."""
    if any('test_images_per_class' not in row for row in rows):
        return None
    return (np.array([row['test_images_per_class'] for row in rows], dtype=np.float64),
            np.array([row['heads'][head]['top1_hits_per_class'] for row in rows], dtype=np.float64))


def class_accuracies(tested, hits):
    """(T, C): top-1 in percent on each class's test images after each batch, from ``class_counts``; NaN where the
    batch tested no image of the class."""
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(tested > 0, 100 * hits / tested, np.nan)


def accuracy_matrix(tested, hits, first):
    """(T, T): the accuracy matrix (see the module's docstring) from ``class_counts`` and ``first_batches``, NaN
    where undefined."""
    batches = len(tested)
    matrix = np.full((batches, batches), np.nan)
    for j in range(batches):
        group = first == j
        images, correct = tested[:, group].sum(axis=1), hits[:, group].sum(axis=1)
        defined = (np.arange(batches) >= j) & (images > 0)
        matrix[defined, j] = 100 * correct[defined] / images[defined]
    return matrix


def average_forgetting(matrix):
    """Chaudhry et al.'s average forgetting of an accuracy matrix (T, T) with NaN where undefined; None for T < 2
    or no defined term."""
    last = len(matrix) - 1
    drops = [np.nanmax(matrix[j:last, j]) - matrix[last, j] for j in range(last)
             if not np.isnan(matrix[last, j]) and not np.isnan(matrix[j:last, j]).all()]
    return mean_or_none(drops)


def backward_transfer(matrix):
    """Lopez-Paz & Ranzato's backward transfer of an accuracy matrix (T, T) with NaN where undefined; None for
    T < 2 or no defined term."""
    last = len(matrix) - 1
    return mean_or_none([matrix[last, j] - matrix[j, j] for j in range(last)
                         if not np.isnan(matrix[last, j]) and not np.isnan(matrix[j, j])])


def class_forgetting(accuracies, first):
    """(C,) float64: each class's forgetting (see the module's docstring) from ``class_accuracies`` and
    ``first_batches``; NaN where undefined (a class never fitted, fitted first in the last batch, or not tested)."""
    last = len(accuracies) - 1
    forgetting = np.full(accuracies.shape[1], np.nan)
    for label, start in enumerate(first.tolist()):
        if 0 <= start < last and not np.isnan(accuracies[start:last, label]).all():
            forgetting[label] = np.nanmax(accuracies[start:last, label]) - accuracies[last, label]
    return forgetting


def mean_or_none(values):
    return float(np.mean(values)) if len(values) else None


def listed(array):
    """A float array as nested lists, NaN as None (JSON's null)."""
    return [listed(item) for item in array] if array.ndim > 1 else \
        [None if np.isnan(value) else float(value) for value in array.tolist()]


def head_metrics(rows, head, first, per_class_curves):
    """The metrics of output layer ``head`` over ``rows`` (non-empty; experiment.py's summary rows), for
    summary.json: accuracies in percent, forgetting and backward transfer in percentage points, per-class lists
    aligned with config.json's classes, None where undefined. ``per_class_curves``: add each class's accuracy
    after every batch and its forgetting (the iid and instance orderings)."""
    curves = {key: [row['heads'][head][key] for row in rows] for key in ('top1', 'top5')}
    out = {'average_incremental_accuracy': {key: float(np.mean(values)) for key, values in curves.items()},
           'last_accuracy': {key: values[-1] for key, values in curves.items()},
           'accuracy_matrix': None, 'average_forgetting': None, 'backward_transfer': None,
           'per_class_final_top1': None}
    counts = class_counts(rows, head)
    if counts is None:
        return out
    matrix, accuracies = accuracy_matrix(*counts, first), class_accuracies(*counts)
    out.update(accuracy_matrix=listed(matrix), average_forgetting=average_forgetting(matrix),
               backward_transfer=backward_transfer(matrix), per_class_final_top1=listed(accuracies[-1]))
    if per_class_curves:
        forgetting = class_forgetting(accuracies, first)
        out.update(per_class_top1=listed(accuracies), per_class_forgetting=listed(forgetting),
                   average_class_forgetting=mean_or_none(forgetting[~np.isnan(forgetting)]))
    return out


def run_metrics(rows, first, per_class_curves):
    """{head: head_metrics} for every output layer of ``rows``; None without rows."""
    if not rows:
        return None
    return {head: head_metrics(rows, head, first, per_class_curves) for head in rows[0]['heads']}


def matrix_csv(metrics):
    """accuracy_matrix.csv's text from ``run_metrics``'s result: a header ``head,after_batch,batch_1,...``, then a
    line per output layer and batch i (from 1): A[i - 1][j] for each j, blank where undefined. Output layers
    without a matrix have no lines."""
    matrices = {head: values['accuracy_matrix'] for head, values in (metrics or {}).items()
                if values['accuracy_matrix'] is not None}
    batches = len(next(iter(matrices.values()))) if matrices else 0
    lines = ['head,after_batch,' + ','.join(f'batch_{j}' for j in range(1, batches + 1))]
    for head, matrix in matrices.items():
        lines += [f'{head},{i},' + ','.join('' if value is None else repr(value) for value in row)
                  for i, row in enumerate(matrix, 1)]
    return '\n'.join(lines) + '\n'
