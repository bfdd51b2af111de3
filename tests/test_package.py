"""The project's `kernels` package shares its top-level name with Hugging Face's hub `kernels`."""

import os

import kernels
import smollm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_kernels_is_ours():
    assert os.path.dirname(os.path.abspath(kernels.__file__)) == os.path.join(ROOT, "kernels")
    assert os.path.dirname(os.path.abspath(smollm.__file__)) == os.path.join(ROOT, "smollm")


def test_transformers_does_not_take_ours_for_hub_kernels():
    from transformers.utils import import_utils

    import_utils.is_kernels_available.cache_clear()
    assert not import_utils.is_kernels_available()
