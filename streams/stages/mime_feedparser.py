"""The stdlib MIME parser, without a regular expression compiled for every multipart boundary.

``email.feedparser`` builds ``re.compile('(?P<sep>' + re.escape('--' + boundary) + ...)`` each
time it opens a multipart, and boundaries are unique per message, so the ``re`` cache never
helps: compiling takes about 0.1 ms, a third of parsing a typical 3 KB message. The pattern only
ever matches the separator literally at the start of a line, then a fixed tail, so a
``startswith`` and one precompiled tail pattern give the same matches.

This module loads a private instance of ``email.feedparser`` (the stdlib's own file, executed
again under this module's name) and gives it a ``re`` whose ``compile`` returns such a matcher
for the boundary pattern and defers to :func:`re.compile` for everything else. The shared
``email.feedparser`` that other code uses is left untouched. When the stdlib module cannot be
loaded that way (a frozen or zipped stdlib without source), :data:`BytesFeedParser` is the
stdlib's own class: slower, same results.

Pure; no I/O beyond the import.
"""

from __future__ import annotations

import email.feedparser
import importlib.util
import re
import types
from typing import TYPE_CHECKING, Any

__all__ = ["BytesFeedParser"]

# What feedparser passes to re.compile for a multipart's boundary line (CPython 3.8 to 3.13).
_BOUNDARY_SOURCE = re.compile(
    r"\(\?P<sep>(?P<escaped>.*)\)"
    + re.escape(r"(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"),
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
# The part of the boundary pattern after the separator, matched from where the separator ends.
_BOUNDARY_TAIL = re.compile(r"(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")


class _BoundaryMatcher:
    """Matches a boundary line as the compiled boundary pattern would (same groups but ``sep``)."""

    __slots__ = ("separator",)

    def __init__(self, separator: str) -> None:
        self.separator = separator

    def match(self, line: str) -> re.Match[str] | None:
        if not line.startswith(self.separator):
            return None
        return _BOUNDARY_TAIL.match(line, len(self.separator))


class _BoundaryAwareRe:
    """The ``re`` module as the private feedparser sees it."""

    def compile(self, pattern: str, flags: int = 0) -> Any:
        found = _BOUNDARY_SOURCE.fullmatch(pattern) if flags == 0 else None
        if found is None:
            return re.compile(pattern, flags)
        # re.escape puts a backslash before each character it escapes, nothing else.
        return _BoundaryMatcher(_ESCAPE.sub(r"\1", found.group("escaped")))

    def __getattr__(self, name: str) -> Any:
        return getattr(re, name)


def _private_feedparser() -> types.ModuleType | None:
    spec = importlib.util.find_spec("email.feedparser")
    if spec is None or spec.loader is None or not spec.has_location:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.re = _BoundaryAwareRe()  # type: ignore[attr-defined]
    return module


_MODULE = _private_feedparser()
if TYPE_CHECKING:
    from email.feedparser import BytesFeedParser
else:
    BytesFeedParser = (
        _MODULE.BytesFeedParser if _MODULE is not None else email.feedparser.BytesFeedParser
    )
