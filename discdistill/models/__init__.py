"""Networks: the MDLM-compatible DiT backbone and its building blocks."""

from discdistill.models.dit import DiT

__all__ = ["DiT"]
