"""Shared test set-up: an isolated TLMULTI_HOME, quiet TensorFlow, fixtures over the tiny
backbones and data of :mod:`tests.builders` (where the builders themselves live)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TLMULTI_OFFLINE", "1")

import pytest  # noqa: E402

from tests import builders  # noqa: E402


@pytest.fixture(autouse=True)
def tlmulti_home(tmp_path_factory, monkeypatch):
    """Each test gets its own weights/backbone/dataset store, so nothing leaks between tests."""
    home = tmp_path_factory.mktemp("tlmulti_home")
    monkeypatch.setenv("TLMULTI_HOME", str(home))
    return home


@pytest.fixture
def tiny_backbone():
    """Registers 'tiny_cnn.test' (builder source, groups block1..block3) for the test."""
    from tlmulti import registry

    name = builders.register_tiny_cnn("tiny_cnn.test")
    yield name
    registry.unregister_backbone(name)


@pytest.fixture
def image_folder(tmp_path):
    return builders.write_image_folder(tmp_path / "images")


@pytest.fixture
def task_case(task_name, tmp_path):
    """The tiny case of ``task_name`` (a test parametrized over the registry's tasks) from
    :data:`tests.builders.TASK_CASES`; fails when the task has no entry there."""
    from tlmulti import registry

    case = builders.task_case(task_name, tmp_path / "case")
    yield case
    for name in case.backbones:
        registry.unregister_backbone(name)
