"""Tests of the evaluation scripts' helper modules: diffusers_dito.training.evaluation (shared) and .decode_sweep."""

import doctest

import pytest

from diffusers_dito.training import decode_sweep, evaluation


@pytest.mark.parametrize("module", [evaluation, decode_sweep])
def test_docstring_examples_run(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_mean_leaves_out_missing_values():
    assert evaluation.mean([1.0, None, 3.0]) == 2.0 and evaluation.mean([None]) is None
