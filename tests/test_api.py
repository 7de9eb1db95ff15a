"""The public API: re-exported, documented, typed."""

from __future__ import annotations

import inspect
import pathlib

import pytest

import trio_kcm

NOT_DOCUMENTABLE = {"__version__", "ENTRY_POINT_GROUP", "ParserLike", "Handshake", "KeyFunction"}


@pytest.mark.parametrize("name", sorted(set(trio_kcm.__all__) - NOT_DOCUMENTABLE))
def test_public_names_are_documented(name: str) -> None:
    obj = getattr(trio_kcm, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    assert obj.__module__ == "trio_kcm", f"{name} should say it lives in trio_kcm"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_") or (not callable(value) and not isinstance(value, property)):
                continue
            if isinstance(obj, type) and issubclass(obj, trio_kcm.StreamState):
                continue
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_everything_exported_exists() -> None:
    for name in trio_kcm.__all__:
        assert hasattr(trio_kcm, name)


def test_package_is_typed() -> None:
    assert (pathlib.Path(trio_kcm.__file__).parent / "py.typed").exists()
