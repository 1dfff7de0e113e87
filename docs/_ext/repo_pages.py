"""Pages whose text is a Markdown file of the repository, read at build time.

The reproduction report and the benchmarks' README live next to the results
they describe (`results/reproduction/`, `benchmarks/`) and are regenerated or
edited there. A documentation page that starts with

    <!-- repo-page: results/reproduction/README.md -->

is replaced by that file when Sphinx reads it, so the site always shows the
committed text. The file's relative links are rewritten for the page's place in
the documentation: a link to another file that is itself shown as a page goes
to that page, a link to any other file of the repository becomes a download of
that file (MyST copies it into the site's `_downloads/`; the project has no
public repository to link to), an image is taken from the repository, and a
link to a directory or to a path that does not exist is a warning (an error
under `sphinx-build -W`).
"""

from __future__ import annotations

import os
import pathlib
import posixpath
import re

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

MARKER = re.compile(r"\A<!-- repo-page: (?P<path>\S+) -->\n")
# [text](target) and ![alt](target); the target has no spaces or parentheses.
LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^()\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _repo_pages(app: Sphinx) -> dict[str, str]:
  """Repository path -> docname, for every page of this kind."""
  pages = {}
  for docname in app.env.found_docs:
    path = pathlib.Path(app.env.doc2path(docname))
    if path.suffix != ".md":
      continue
    match = MARKER.match(path.read_text(encoding="utf-8"))
    if match:
      pages[match["path"]] = docname
  return pages


def _rewrite_target(app: Sphinx, docname: str, source: str, target: str,
                    image: bool) -> str:
  if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
    return target  # a URL, or an anchor on the same page
  path, hash_, anchor = target.partition("#")
  repo = pathlib.Path(app.config.repo_pages_root)
  resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
  if resolved.startswith("../") or not (repo / resolved).exists():
    logger.warning(f"{source} links to {target!r}, which is not in the "
                   "repository", location=docname)
    return target
  page_dir = posixpath.dirname(docname)
  pages = app.env.repo_pages
  if resolved in pages and not image:
    relative = posixpath.relpath(pages[resolved], page_dir or ".")
    return f"{relative}.md{hash_}{anchor}"
  if (repo / resolved).is_dir():
    logger.warning(f"{source} links to the directory {target!r}, which the "
                   "site cannot show: link to a file in it", location=docname)
    return target
  page_path = pathlib.Path(app.srcdir) / page_dir
  relative = pathlib.Path(os.path.relpath(repo / resolved, page_path)).as_posix()
  # MyST's `path:` scheme: a download of the file, even of a Markdown file.
  return relative if image else f"path:{relative}"


def _rewrite_links(app: Sphinx, docname: str, source: str, text: str) -> str:
  return LINK.sub(
      lambda m: (f"{m['bang']}[{m['text']}](" + _rewrite_target(
          app, docname, source, m["target"], bool(m["bang"])) + ")"),
      text)


def _find_pages(app: Sphinx, env, docnames) -> None:
  del docnames
  env.repo_pages = _repo_pages(app)


def _read(app: Sphinx, docname: str, content: list[str]) -> None:
  match = MARKER.match(content[0])
  if not match:
    return
  source = match["path"]
  path = pathlib.Path(app.config.repo_pages_root) / source
  if not path.is_file():
    logger.warning(f"repo-page {source} does not exist", location=docname)
    return
  app.env.note_dependency(str(path))
  # Links may span lines, so rewrite whole runs of text between code fences.
  chunks, prose, in_fence = [], [], False
  for line in path.read_text(encoding="utf-8").splitlines():
    if FENCE.match(line) or in_fence:
      if prose:
        chunks.append(_rewrite_links(app, docname, source, "\n".join(prose)))
        prose = []
      chunks.append(line)
      if FENCE.match(line):
        in_fence = not in_fence
    else:
      prose.append(line)
  if prose:
    chunks.append(_rewrite_links(app, docname, source, "\n".join(prose)))
  content[0] = "\n".join(chunks) + "\n"


def setup(app: Sphinx) -> dict:
  app.add_config_value("repo_pages_root", "", "env")
  app.connect("env-before-read-docs", _find_pages)
  app.connect("source-read", _read)
  return {"parallel_read_safe": False, "env_version": 2}
