"""Tests of metrics.py: the accuracy matrix, average incremental and last accuracy, forgetting, backward transfer and
per-class accuracies; textbook values of hand-made matrices, and a run's metrics recomputed from its preds_* files
and label files."""
import csv
import json
import math

import numpy as np
import pytest
import torch

import metrics
from conftest import run

NAN = math.nan


def test_a_hand_made_matrix_gives_the_textbook_forgetting_and_backward_transfer():
    matrix = np.array([[90, NAN, NAN],
                       [95, 70, NAN],
                       [60, 75, 50]], dtype=float)
    # Chaudhry et al.: f_0 = max(90, 95) - 60 = 35, f_1 = 70 - 75 = -5; Lopez-Paz & Ranzato: (60 - 90 + 75 - 70) / 2
    assert metrics.average_forgetting(matrix) == 15.0
    assert metrics.backward_transfer(matrix) == -12.5
    assert metrics.average_forgetting(matrix[:1, :1]) is None and metrics.backward_transfer(matrix[:1, :1]) is None
    with_gap = matrix.copy()
    with_gap[:, 1] = NAN            # a class group with no test image: left out of the means
    assert metrics.average_forgetting(with_gap) == 35.0 and metrics.backward_transfer(with_gap) == -30.0


def rows_of(tested, hits, top5=None):
    """Summary rows of one head 'slda' from per-batch, per-class test counts and top-1 hits (lists of lists); top-1
    (and top-5, default the top-1) as experiment.py computes them from the same counts."""
    rows = []
    for i, (tested_now, hits_now) in enumerate(zip(tested, hits)):
        top1 = 100 * sum(hits_now) / sum(tested_now)
        rows.append({'test_images_per_class': tested_now,
                     'heads': {'slda': {'top1': top1, 'top5': top1 if top5 is None else top5[i],
                                        'top1_hits_per_class': hits_now}}})
    return rows


def test_the_matrix_groups_classes_by_the_batch_that_first_fits_them():
    # classes 0 and 3 in batch 0, class 1 in batch 1, class 2 in batch 2, class 4 never
    first = np.array([0, 1, 2, 0, -1])
    tested = [[2, 0, 0, 4, 0], [2, 5, 0, 4, 0], [2, 5, 1, 4, 0]]
    hits = [[2, 0, 0, 3, 0], [1, 4, 0, 2, 0], [0, 5, 1, 3, 0]]
    got = metrics.run_metrics(rows_of(tested, hits, top5=[90, 80, 70]), first, per_class_curves=False)['slda']
    assert got['accuracy_matrix'] == [[100 * 5 / 6, None, None],
                                      [100 * 3 / 6, 80.0, None],
                                      [100 * 3 / 6, 100.0, 100.0]]
    assert got['average_incremental_accuracy'] == pytest.approx({'top1': (500 / 6 + 700 / 11 + 900 / 12) / 3,
                                                                 'top5': 80})
    assert got['last_accuracy'] == {'top1': 75.0, 'top5': 70}
    assert got['average_forgetting'] == pytest.approx(((500 / 6 - 50) + (80 - 100)) / 2)
    assert got['backward_transfer'] == pytest.approx(((50 - 500 / 6) + (100 - 80)) / 2)
    assert got['per_class_final_top1'] == [0.0, 100.0, 100.0, 75.0, None]
    assert 'per_class_top1' not in got


def test_a_stream_whose_accuracies_never_change_forgets_nothing():
    first = np.array([0, 0, 1, 2])
    tested = [[3, 3, 0, 0], [3, 3, 2, 0], [3, 3, 2, 5]]
    hits = [[2, 1, 0, 0], [2, 1, 1, 0], [2, 1, 1, 4]]
    got = metrics.run_metrics(rows_of(tested, hits), first, per_class_curves=True)['slda']
    assert got['average_forgetting'] == 0 and got['backward_transfer'] == 0
    assert got['per_class_forgetting'] == [0.0, 0.0, 0.0, None]     # class 3 is first fitted in the last batch
    assert got['average_class_forgetting'] == 0


def test_the_iid_orderings_get_each_class_s_accuracy_after_every_batch_and_its_forgetting():
    first = np.array([0, 0, 1])                 # class 2 first fitted in batch 1, tested from batch 0 on
    tested = [[2, 4, 5]] * 3
    hits = [[2, 1, 0], [1, 3, 5], [0, 4, 2]]
    got = metrics.run_metrics(rows_of(tested, hits), first, per_class_curves=True)['slda']
    assert got['per_class_top1'] == [[100.0, 25.0, 0.0], [50.0, 75.0, 100.0], [0.0, 100.0, 40.0]]
    # the largest accuracy after the batch that first fitted the class and before the last, minus the last
    assert got['per_class_forgetting'] == [100.0, -25.0, 60.0]
    assert got['average_class_forgetting'] == pytest.approx(135 / 3)


def test_rows_without_per_class_counts_still_give_the_mean_and_last_accuracies():
    rows = [{'heads': {'slda': {'top1': 50.0, 'top5': 90.0}}}, {'heads': {'slda': {'top1': 40.0, 'top5': 80.0}}}]
    got = metrics.run_metrics(rows, np.array([0, 1]), per_class_curves=False)['slda']
    assert got['average_incremental_accuracy'] == {'top1': 45.0, 'top5': 85.0}
    assert got['accuracy_matrix'] is None and got['average_forgetting'] is None
    assert metrics.matrix_csv({'slda': got}) == 'head,after_batch,\n'


def top1_hit(probabilities, label):
    """Whether ``label`` alone has the highest probability (ties count against it, as the run's ranking)."""
    return all(p < probabilities[label] for k, p in enumerate(probabilities) if k != label)


def test_a_run_s_metrics_equal_a_recomputation_from_its_preds_and_label_files(tmp_path):
    save = tmp_path / 'out'
    assert run(['--num_classes', 3, '--class_increment', 1, '--heads', 'slda,ncm', '--no-streaming_update_sigma',
                '--save_dir', save])[0] == 0
    summary = json.loads((save / 'summary.json').read_text())
    order = json.loads((save / 'config.json').read_text())['class_order']
    positions = np.load(save / 'digits_val_labels.npy')        # each test image's class's stream position
    seen = [row['classes_seen'] for row in summary['increments']]
    batches = len(seen)
    expected = [[None] * batches for _ in range(batches)]
    for i, classes_seen in enumerate(seen):
        probabilities = torch.load(save / f'preds_min_trained_0_max_trained_{classes_seen}.pt').tolist()
        evaluated = [position for position in positions.tolist() if position < classes_seen]   # in dataset order
        assert len(probabilities) == len(evaluated)
        for j in range(i + 1):
            group = [top1_hit(p, order[position]) for p, position in zip(probabilities, evaluated)
                     if (seen[j - 1] if j else 0) <= position < seen[j]]
            expected[i][j] = 100 * sum(group) / len(group)
    got = summary['metrics']['slda']
    for got_row, expected_row in zip(got['accuracy_matrix'], expected):
        assert got_row == [None if value is None else pytest.approx(value) for value in expected_row]
    last = batches - 1
    forgetting = [max(expected[l][j] for l in range(j, last)) - expected[last][j] for j in range(last)]
    assert got['average_forgetting'] == pytest.approx(sum(forgetting) / last)
    assert got['backward_transfer'] == pytest.approx(sum(expected[last][j] - expected[j][j]
                                                         for j in range(last)) / last)
    assert got['average_forgetting'] > 0        # the fixed covariance does forget here: the check is not vacuous
    accuracies = json.loads((save / f'accuracies_min_trained_0_max_trained_{seen[-1]}.json').read_text())
    assert got['average_incremental_accuracy'] == pytest.approx(
        {'top1': np.mean(accuracies['seen_classes_top1']), 'top5': np.mean(accuracies['seen_classes_top5'])})
    assert got['last_accuracy'] == {'top1': accuracies['seen_classes_top1'][-1],
                                    'top5': accuracies['seen_classes_top5'][-1]}
    final = torch.load(save / f'preds_min_trained_0_max_trained_{seen[-1]}.pt').tolist()
    for label, accuracy in enumerate(got['per_class_final_top1']):
        hits = [top1_hit(p, label) for p, position in zip(final, positions.tolist()) if order[position] == label]
        assert accuracy == (pytest.approx(100 * sum(hits) / len(hits)) if label in order[:seen[-1]] else None)
    ncm = summary['metrics']['ncm']
    assert ncm['average_incremental_accuracy']['top1'] == pytest.approx(
        np.mean([row['heads']['ncm']['top1'] for row in summary['increments']]))
    with open(save / 'accuracy_matrix.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['head', 'after_batch'] + [f'batch_{j}' for j in range(1, batches + 1)]
    for head in ('slda', 'ncm'):
        lines = [line for line in table[1:] if line[0] == head]
        assert [[float(cell) if cell else None for cell in line[2:]] for line in lines] == \
            summary['metrics'][head]['accuracy_matrix']
