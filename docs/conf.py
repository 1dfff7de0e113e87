"""Sphinx configuration of the extrap_optax documentation.

Build from the repository root (the README's command), warnings as errors:

    python -m sphinx -W --keep-going -b html docs docs/_build/html

The API reference is generated from the docstrings of the checkout's
`extrap_optax` (autodoc, Google-style sections through napoleon); prose pages
are MyST Markdown. The site works without a network: MathJax comes from the
`sphinx-mathjax-offline` package (copied into `_static/mathjax/`), the source
of each API entry is a page of the site (`sphinx.ext.viewcode`), and a link to
a repository file that is not a page downloads the file. The project has no
public repository to link to.
"""

import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
REPO = DOCS.parent
sys.path.insert(0, str(REPO))  # document the checkout, not an installed copy
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import extrap_optax  # pylint: disable=wrong-import-position

project = "extrap_optax"
author = "The extrap_optax authors"
copyright = "2026, The extrap_optax authors"  # pylint: disable=redefined-builtin
release = version = extrap_optax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 served from _static/, not a CDN
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "repo_pages",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
# `name` in a docstring links to the API entry of that name where one exists.
default_role = "py:obj"

autosummary_generate = False  # api.rst lists every entry by hand, as optax does
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

repo_pages_root = str(REPO)

html_theme = "sphinx_book_theme"
html_title = "extrap_optax"
html_theme_options = {"show_toc_level": 2}

