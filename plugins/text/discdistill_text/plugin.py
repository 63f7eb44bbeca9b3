"""Entry point of the ``discdistill`` group: registers the text domains (see pyproject.toml)."""

from __future__ import annotations

from discdistill.interfaces import Domain
from discdistill.plugins import hookimpl

from discdistill_text.chars_domain import CharsDomain
from discdistill_text.domain import TextDomain


@hookimpl
def discdistill_domains() -> list[type[Domain]]:
    return [TextDomain, CharsDomain]
