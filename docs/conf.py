"""Sphinx configuration for the trio-kcm documentation (``nox -s docs``)."""

from __future__ import annotations

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
