"""Metrics checked against values worked out by hand on tiny examples."""

import json
import math
import time

import numpy as np
import pytest
import torch

from edgecls.evaluate import (
    compute_metrics,
    format_metrics,
    mean_inverse_rank,
    top_k_accuracy,
)

CLASSES = ["cat", "dog", "bird"]

# 4 samples, 3 classes. Rank of the true class (1 = highest score) and argmax prediction:
#   sample 0: [3, 1, 0] true cat  -> rank 1, predicted cat
#   sample 1: [2, 1, 0] true dog  -> rank 2, predicted cat
#   sample 2: [0, 5, 1] true bird -> rank 2, predicted dog
#   sample 3: [4, 2, 1] true bird -> rank 3, predicted cat
# bird is never predicted.
LOGITS = np.array([[3, 1, 0], [2, 1, 0], [0, 5, 1], [4, 2, 1]], dtype=np.float32)
LABELS = np.array([0, 1, 2, 2])


def test_mean_inverse_rank_by_hand():
    # (1/1 + 1/2 + 1/2 + 1/3) / 4 = (7/3) / 4 = 7/12
    assert mean_inverse_rank(LOGITS, LABELS) == pytest.approx(7 / 12)


def test_mean_inverse_rank_extremes():
    # True class always highest -> 1.0; always lowest of C=3 -> 1/3.
    assert mean_inverse_rank(LOGITS, np.array([0, 0, 1, 0])) == pytest.approx(1.0)
    assert mean_inverse_rank(LOGITS, np.array([2, 2, 0, 2])) == pytest.approx(1 / 3)


def test_mean_inverse_rank_ties_count_only_strictly_greater():
    # [1, 1, 0] true class 1: nothing strictly greater -> rank 1.
    # [0, 2, 2, 2] true class 3: classes 1 and 2 tie with it, none greater -> rank 1.
    # [5, 2, 2, 2] true class 3: only class 0 strictly greater -> rank 2.
    assert mean_inverse_rank(np.array([[1.0, 1.0, 0.0]]), np.array([1])) == 1.0
    assert mean_inverse_rank(np.array([[0.0, 2.0, 2.0, 2.0]]), np.array([3])) == 1.0
    assert mean_inverse_rank(np.array([[5.0, 2.0, 2.0, 2.0]]), np.array([3])) == 0.5


def test_top_k_accuracy_by_hand():
    # Ranks are 1, 2, 2, 3: top-1 = 1/4, top-2 = 3/4, top-3 = 4/4.
    assert top_k_accuracy(LOGITS, LABELS, 1) == 0.25
    assert top_k_accuracy(LOGITS, LABELS, 2) == 0.75
    assert top_k_accuracy(LOGITS, LABELS, 3) == 1.0


def test_top_k_capped_at_num_classes():
    # C = 3, so top-5 means top-3 and every sample counts.
    assert top_k_accuracy(LOGITS, LABELS, 5) == 1.0
    assert compute_metrics(LOGITS, LABELS, CLASSES).top5 == 1.0


def test_top_k_ties_break_towards_lower_index_like_argmax():
    # [0, 2, 2, 2] true class 3: classes 1 and 2 tie with it and come first -> position 3.
    scores, labels = np.array([[0.0, 2.0, 2.0, 2.0]]), np.array([3])
    assert top_k_accuracy(scores, labels, 2) == 0.0
    assert top_k_accuracy(scores, labels, 3) == 1.0
    # [1, 1, 0] true class 0: argmax picks class 0, so top-1 counts it.
    assert top_k_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([0]), 1) == 1.0
    assert top_k_accuracy(np.array([[1.0, 1.0, 0.0]]), np.array([1]), 1) == 0.0


def test_compute_metrics_by_hand():
    m = compute_metrics(LOGITS, LABELS, CLASSES)
    assert m.top1 == 0.25
    assert m.map == pytest.approx(7 / 12)
    assert m.num_samples == 4
    assert m.classes == CLASSES
    # Rows are the true class, columns the prediction:
    #   cat:  sample 0 -> cat
    #   dog:  sample 1 -> cat
    #   bird: sample 2 -> dog, sample 3 -> cat
    assert m.confusion == [[1, 0, 0], [1, 0, 0], [1, 1, 0]]
    # Predicted column sums 3, 1, 0 with 1, 0, 0 correct; bird never predicted -> 0.0.
    assert m.precision == pytest.approx([1 / 3, 0.0, 0.0])
    # True row sums 1, 1, 2 with 1, 0, 0 correct.
    assert m.recall == pytest.approx([1.0, 0.0, 0.0])


def test_loss_is_mean_cross_entropy():
    # -log softmax(true class) per sample, written out.
    def nll(row, label):
        return math.log(sum(math.exp(v) for v in row)) - row[label]

    expected = sum(nll(row, label) for row, label in zip(LOGITS.tolist(), LABELS, strict=True)) / 4
    m = compute_metrics(LOGITS, LABELS, CLASSES)
    assert m.loss == pytest.approx(expected)
    reference = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert m.loss == pytest.approx(reference.item(), rel=1e-6)


def test_loss_is_stable_for_huge_logits():
    m = compute_metrics(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([0, 0]), ["a", "b"])
    assert m.loss == pytest.approx(500.0)


def test_class_without_samples_has_zero_recall():
    m = compute_metrics(LOGITS[:2], LABELS[:2], CLASSES)
    # Only cat and dog samples; bird row is empty.
    assert m.confusion[2] == [0, 0, 0]
    assert m.recall[2] == 0.0


def test_torch_and_numpy_inputs_agree():
    from_numpy = compute_metrics(LOGITS, LABELS, CLASSES)
    from_torch = compute_metrics(torch.tensor(LOGITS), torch.tensor(LABELS), CLASSES)
    assert from_torch == from_numpy


def test_to_dict_is_json_serialisable():
    d = compute_metrics(LOGITS, LABELS, CLASSES).to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {
        "top1",
        "top5",
        "map",
        "balanced_accuracy",
        "loss",
        "per_class",
        "confusion",
        "classes",
        "num_samples",
    }
    assert d["per_class"][2] == {"class": "bird", "precision": 0.0, "recall": 0.0, "support": 2}
    assert d["per_class"][0] == {
        "class": "cat",
        "precision": pytest.approx(1 / 3),
        "recall": 1.0,
        "support": 1,
    }


@pytest.mark.parametrize(
    ("logits", "labels", "classes"),
    [
        (LOGITS, LABELS, ["cat", "dog"]),  # wrong number of class names
        (LOGITS, np.array([0, 1, 2, 3]), CLASSES),  # label out of range
        (LOGITS, LABELS[:3], CLASSES),  # length mismatch
        (LOGITS[0], LABELS[:1], CLASSES),  # 1-D logits
        (LOGITS[:0], LABELS[:0], CLASSES),  # empty
    ],
)
def test_bad_input_is_rejected(logits, labels, classes):
    with pytest.raises(ValueError):
        compute_metrics(logits, labels, classes)


def test_format_metrics_small():
    text = format_metrics(compute_metrics(LOGITS, LABELS, CLASSES), title="val")
    lines = text.splitlines()
    assert lines[0] == "val"
    assert "top-1 25.00%" in text and "top-5 100.00%" in text and "mAP 58.33%" in text
    assert "precision" in text and "recall" in text and "support" in text
    # Header + 3 class rows after the title and summary line.
    assert len(lines) == 6
    assert lines[-1].split() == ["bird", "0.0%", "0.0%", "2"]


def test_format_metrics_many_classes_shows_worst_ten():
    num_classes = 40
    classes = [f"class_{i:02d}" for i in range(num_classes)]
    labels = np.repeat(np.arange(num_classes), 2)
    logits = np.eye(num_classes)[labels]
    logits[labels == 7] = np.eye(num_classes)[0]  # class 07 always wrong -> recall 0
    text = format_metrics(compute_metrics(logits, labels, classes))
    assert "10 of 40 classes shown" in text
    class_rows = [line for line in text.splitlines() if line.startswith("class_")]
    assert len(class_rows) == 10
    assert class_rows[0].startswith("class_07")


def test_fast_for_10k_samples_100_classes():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(10_000, 100)), dtype=torch.float32)
    labels = torch.tensor(rng.integers(0, 100, size=10_000))
    start = time.perf_counter()
    m = compute_metrics(logits, labels, [str(i) for i in range(100)])
    assert time.perf_counter() - start < 1.0
    # Random scores: top-1 near 1/100, top-5 near 5/100.
    assert 0.0 < m.top1 < 0.03 and 0.03 < m.top5 < 0.08
    assert sum(map(sum, m.confusion)) == 10_000
