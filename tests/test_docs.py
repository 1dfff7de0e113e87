"""The documentation: it builds without a warning, its code runs, its references resolve.

- The Sphinx site in `docs/` builds with warnings as errors (the README's
  command), so a broken cross-reference, a malformed docstring or a link from
  a repository page to a file that does not exist fails here.
- The `Examples:` of every docstring in `extrap_optax` run as doctests, and the
  code of the getting-started page runs.
- Every reference in the library's docstrings and comments points to
  something that exists: a `:ref:` label or `:doc:` page of `docs/`, a file of
  the repository, or a section of a named publication ("paper §3.2"); none to
  the project's internal design notes, which are not in the repository.
- One docstring style (optax's): every public function and class documents
  its arguments and what it returns, cites its source, and has an example that
  runs.
"""

import ast
import doctest
import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import extrap_optax
from tests import test_repository_text

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SRC = REPO / "extrap_optax" / "_src"
MODULES = sorted(f"extrap_optax._src.{p.stem}" for p in SRC.glob("*.py")
                 if p.stem != "__init__")
PUBLIC = {name: getattr(extrap_optax, name) for name in extrap_optax.__all__}
PUBLIC_CALLABLES = {name: obj for name, obj in PUBLIC.items()
                    if inspect.isfunction(obj) or name == "Workers"}
# Results of a call rather than algorithms from a publication.
NO_REFERENCE_NEEDED = {"evaluation_params", "averages_models", "worker_index", "Workers"}


def _labels() -> set[str]:
  labels = set()
  for path in DOCS.glob("*.md"):
    labels.update(re.findall(r"^\((\S+)\)=$", path.read_text(), re.M))
  for path in DOCS.glob("*.rst"):
    labels.update(re.findall(r"^\.\. _([^:]+):$", path.read_text(), re.M))
  return labels


def _docstrings_and_comments(path: pathlib.Path) -> str:
  source = path.read_text()
  texts = [line.partition("#")[2] for line in source.splitlines()
           if line.lstrip().startswith("#")]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
      texts.append(ast.get_docstring(node, clean=False) or "")
  return "\n".join(texts)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
  module = importlib.import_module(module_name)
  runner = doctest.DocTestRunner(
      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  tests = doctest.DocTestFinder(exclude_empty=True).find(module)
  for test in tests:
    runner.run(test)
  assert runner.failures == 0, f"{runner.failures} doctest failure(s), printed above"


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLABLES))
def test_public_docstrings_follow_the_optax_style(name):
  obj = PUBLIC_CALLABLES[name]
  doc = inspect.getdoc(obj)
  assert doc and len(doc.splitlines()[0]) <= 88, f"{name}: a one-line summary"
  parameters = [p for p in inspect.signature(obj).parameters if p != "self"]
  if parameters:
    assert "\nArgs:\n" in doc, f"{name}: document the arguments in `Args:`"
    for parameter in parameters:
      # Shared keyword arguments are documented once, as one entry naming
      # several ("momentum, nesterov, ...: as in `nesterov_sgd`").
      assert re.search(rf"^  (\w+, )*{parameter}(, \w+)*:", doc, re.M), (
          f"{name}: argument `{parameter}` is not in `Args:`")
  if inspect.isfunction(obj):
    assert "\nReturns:\n" in doc, f"{name}: say what it returns in `Returns:`"
  if name not in NO_REFERENCE_NEEDED:
    assert "\nReferences:\n" in doc, f"{name}: cite the source in `References:`"
  assert "\nExamples:\n" in doc and ">>> " in doc, (
      f"{name}: give an example that runs in `Examples:`")


def test_math_docstrings_are_raw():
  for path in SRC.glob("*.py"):
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
      if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
        continue
      doc = ast.get_docstring(node, clean=False)
      if doc and "\\" in doc:
        segment = ast.get_source_segment(source, node.body[0].value)
        assert segment.startswith('r"""'), (
            f"{path.name}: the docstring of {getattr(node, 'name', 'the module')} "
            "has backslashes (math): make it a raw docstring, r\"\"\"...\"\"\"")


def test_documentation_references_resolve():
  labels = _labels()
  for path in sorted(SRC.glob("*.py")):
    text = _docstrings_and_comments(path)
    for banned in ("ALGORITHMS.md", "PLATFORM.md", "design note"):
      assert banned not in text, (
          f"{path.name} cites {banned!r}, which is not in the repository: "
          "point to a page or section of docs/ instead")
    for label in re.findall(r":ref:`(?:[^`<]*<)?([^`>]+)>?`", text):
      assert label in labels, f"{path.name}: no docs section is labelled {label!r}"
    for page in re.findall(r":doc:`(?:[^`<]*<)?([^`>]+)>?`", text):
      assert any((DOCS / f"{page}{suffix}").is_file() for suffix in (".md", ".rst")), (
          f"{path.name}: no docs page {page!r}")
    for file in re.findall(r"\b((?:experiments|benchmarks|docs|tests|results)/[\w./-]*\w)", text):
      assert (REPO / file).exists(), f"{path.name} refers to {file}, which does not exist"
    for match in re.finditer("§", text):
      before = text[max(0, match.start() - 16):match.start()]
      assert re.search(r"(\bpaper('s)?|ICML 2020,|\b(19|20)\d\d,)\s*$", before), (
          f"{path.name}: '{before}§...' does not say whose section it is; write "
          "'paper §N' or cite the publication")


def test_every_public_name_is_in_the_api_reference():
  api = (DOCS / "api.rst").read_text()
  documented = set(re.findall(r"^\.\. auto(?:function|class):: (\w+)$", api, re.M))
  assert documented == set(extrap_optax.__all__)


def test_getting_started_code_runs():
  """The page's two blocks run as a newcomer runs them: one process, one CPU.

  Not under the suite's 8 fake devices: with more fake devices than cores,
  XLA:CPU's in-process all-reduce (jaxlib 0.10.2) can deadlock when Python
  dispatches many steps ahead, as the page's loop does (docs/algorithms.md,
  "To simulate K workers"). The multi-device paths are tested elsewhere, on
  loops that read each step back.
  """
  page = (DOCS / "getting_started.md").read_text()
  blocks = re.findall(r"^```python\n(.*?)^```$", page, re.M | re.S)
  assert len(blocks) == 2
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  losses = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines()]
  assert len(losses) == 2 and max(losses) < 1e-3, result.stdout  # both fit


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
       "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  assert not result.stderr.strip(), result.stderr
  for page in ("index", "getting_started", "algorithms", "training_script",
               "experiments", "reproduction", "reproduction_fig1_cpu",
               "reproduction_fig1_cpu_k32", "reproduction_fig3_cpu",
               "benchmarks", "contract", "api"):
    assert (tmp_path / "html" / f"{page}.html").is_file(), page
  api = (tmp_path / "html" / "api.html").read_text()
  assert 'id="extrap_optax.extrap_sgd"' in api
  reproduction = (tmp_path / "html" / "reproduction.html").read_text()
  for study in ("fig1_cpu", "fig1_cpu_k32", "fig3_cpu"):
    assert f'href="reproduction_{study}.html"' in reproduction, study
  # Offline: MathJax is served with the site (sphinx-mathjax-offline), no page
  # loads a script from elsewhere, and no page links to a repository that is
  # not a known real one (tests/test_repository_text.py).
  assert 'src="_static/mathjax/tex-chtml.js"' in api
  assert (tmp_path / "html" / "_static" / "mathjax" / "tex-chtml.js").is_file()
  for page in (tmp_path / "html").glob("*.html"):
    text = page.read_text()
    remote = re.findall(r'<script[^>]*\bsrc="(?:https?:)?//[^"]*"', text)
    assert not remote, f"{page.name} loads scripts from the network: {remote}"
    assert not test_repository_text.unknown_repository_links(text), page.name


def test_the_jax_limitation_of_the_global_view_page_still_reproduces():
  """The reproduction in docs/training_script.md fails as the page says.

  When a JAX release lowers the reduction, this fails: then
  `over_stacked_workers` may drop its `auto_axes` and the page its paragraph.
  """
  page = (DOCS / "training_script.md").read_text()
  block = next(b for b in re.findall(r"^```python\n(.*?)^```$", page, re.M | re.S)
               if "jax.lax.psum(v, 0)" in b)
  result = subprocess.run([sys.executable, "-c", block], cwd=REPO,
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert "does not evenly divide the dimension size 3" in result.stderr
