"""A griffe extension for the API reference: the source's docstrings cross-reference in Sphinx's roles
(:func:`~scorelab.samplers.sample`, :mod:`scorelab.discrete`, ...), which Markdown would show verbatim.
Each becomes inline code, the last component alone where the role says ``~`` as Sphinx does. Only what the
documentation shows changes; the source is untouched."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|data|attr|meth|obj|exc|const):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
