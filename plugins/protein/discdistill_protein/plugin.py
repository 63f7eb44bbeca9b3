"""Entry point of the discdistill-protein distribution (group ``discdistill``, name ``protein``)."""

from __future__ import annotations

from discdistill.interfaces import Domain
from discdistill.plugins import hookimpl
from discdistill_protein.domain import ProteinDomain


@hookimpl
def discdistill_domains() -> list[type[Domain]]:
    return [ProteinDomain]
