"""Sphinx configuration for the trio-kcm documentation (``nox -s docs``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import trio_kcm

project = "trio-kcm"
author = "trio-kcm developers"
copyright = "2026, trio-kcm developers"
release = trio_kcm.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# Trio's own names in signatures are left as text: no network for intersphinx.
nitpicky = False

html_theme = "furo"
html_title = f"trio-kcm {release}"


# Public classes say they live in ``trio_kcm`` (``__module__`` is rewritten,
# as Trio does), so autodoc looks for their attributes' ``#:`` comments and
# docstrings in trio_kcm/__init__.py and finds none.  This finds them in the
# private module that defines the class.
@functools.cache
def _defining_module(cls: type) -> str | None:
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(trio_kcm.__path__, "trio_kcm."):
        module = importlib.import_module(info.name)
        if getattr(module, cls.__name__, None) is cls:
            source = Path(module.__file__ or "").read_text(encoding="utf-8")
            if f"class {cls.__name__}" in source:
                return info.name
    return None


def _attribute_docs(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    if what != "attribute" or lines:
        return
    owner_name, _, attr = name.rpartition(".")
    owner = getattr(trio_kcm, owner_name.rpartition(".")[2], None)
    if not isinstance(owner, type):
        return
    modname = _defining_module(owner)
    if modname is None:
        return
    from sphinx.pycode import ModuleAnalyzer

    docs = ModuleAnalyzer.for_module(modname).find_attr_docs()
    lines.extend(docs.get((owner.__qualname__, attr), []))


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", _attribute_docs)
