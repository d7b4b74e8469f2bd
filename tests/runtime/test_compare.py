"""The comparison numbers every report is built from."""

from __future__ import annotations

import numpy as np
import pytest

from rexport.errors import InputError
from rexport.runtime.compare import compare, topk_accuracy
from rexport.runtime.gates import Tolerance


def test_identical_outputs():
    x = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    c = compare(x, x)
    assert c.max_abs == 0 and c.max_rel == 0 and c.top1_agreement == 1 and c.cosine == pytest.approx(1)
    assert c.passed


def test_numbers_on_a_constructed_case():
    ref = np.array([[1.0, 2.0, 10.0], [5.0, 0.0, 1.0]])
    got = np.array([[1.0, 2.5, 10.0], [5.0, 6.0, 1.0]])  # second sample's argmax flips to class 1
    c = compare(got, ref, Tolerance(atol=0.1, rtol=0.01))
    assert c.max_abs == pytest.approx(6.0)
    assert c.max_rel == pytest.approx(0.25)  # 0.5 / 2; the 0.0 reference is excluded (|r| <= atol)
    assert c.top1_agreement == 0.5
    assert c.tolerance_ratio == pytest.approx(6.0 / 0.1)
    assert not c.passed
    assert c.mean_abs == pytest.approx(6.5 / 6)


def test_allclose_semantics():
    ref = np.array([[100.0, 0.0]])
    assert compare(np.array([[100.9, 0.0]]), ref, Tolerance(atol=0.0, rtol=0.01)).passed
    assert not compare(np.array([[101.1, 0.0]]), ref, Tolerance(atol=0.0, rtol=0.01)).passed
    assert not compare(np.array([[100.0, 1e-9]]), ref, Tolerance(atol=0.0, rtol=0.01)).passed


def test_nonfinite_values_fail():
    ref = np.ones((2, 3))
    c = compare(np.array([[1, np.nan, 1], [1, 1, np.inf]]), ref)
    assert c.nonfinite == 2 and not c.passed


def test_topk_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 0])
    assert topk_accuracy(logits, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(logits, labels, 5) == 1.0
    with pytest.raises(InputError):
        topk_accuracy(logits, labels[:2])


def test_shape_mismatch_is_an_error():
    with pytest.raises(InputError, match="cannot compare"):
        compare(np.zeros((2, 3)), np.zeros((2, 4)))
