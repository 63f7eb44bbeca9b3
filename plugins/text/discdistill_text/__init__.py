"""discdistill-text: the text domain plugin for discdistill (GPT-2 BPE, OpenWebText, embedded corpus).

Installed, it registers the domain ``"text"`` through the ``discdistill`` entry-point group; the core
never imports this package. Public names::

    from discdistill_text import TextDomain, get_tokenizer, unigram_entropy
"""

from discdistill_text.corpus import embedded_records, load_blocks, wrap_blocks
from discdistill_text.domain import (
    TextDomain,
    read_samples,
    unigram_cross_entropy,
    unigram_entropy,
    write_samples,
)
from discdistill_text.tokenizer import EOS_ID, MASK_ID, GPT2BPETokenizer, get_tokenizer

__all__ = [
    "EOS_ID",
    "MASK_ID",
    "GPT2BPETokenizer",
    "TextDomain",
    "embedded_records",
    "get_tokenizer",
    "load_blocks",
    "read_samples",
    "unigram_cross_entropy",
    "unigram_entropy",
    "wrap_blocks",
    "write_samples",
]
__version__ = "0.1.0"
