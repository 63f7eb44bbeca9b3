"""The denoiser contract's sizes read from a model's ``config`` (every built-in backbone keeps them there)."""

from __future__ import annotations


class SizesFromConfig:
    """``vocab_size``, ``seq_len`` and ``mask_id`` of `MaskedDiffusionTeacher`, from ``self.config``."""

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def seq_len(self) -> int:
        """The longest sequence the network accepts (position tables are sized for it)."""
        return self.config.seq_len

    @property
    def mask_id(self) -> int:
        return self.config.mask_id
