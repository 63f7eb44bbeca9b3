"""GPT-2 byte-level BPE with the exact GPT-2 ids, offline, plus one mask id.

The vocabulary and merges are OpenAI's GPT-2 files, vendored in ``data/`` (``encoder.json`` and
``vocab.bpe``, byte-identical to the originals; see ``data/NOTICE.md``). They are loaded with the
``tokenizers`` library directly, which is what `transformers.GPT2TokenizerFast` wraps; the ids were
checked equal to ``GPT2TokenizerFast.from_pretrained`` on the whole embedded corpus.

Ids: 0..50255 are BPE tokens, 50256 is ``<|endoftext|>`` (EOS, and BOS as in GPT-2), 50257 is the
diffusion mask (MDLM's convention: the mask is appended after GPT-2's vocabulary), so
``vocab_size`` = 50258. There is no pad id: training blocks are wrapped, never padded.

Note: do not build the tokenizer with ``GPT2TokenizerFast(vocab_file=..., merges_file=...)``: with
transformers 5.x that silently yields an empty vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

from discdistill.interfaces import Tokenizer

EOS_TOKEN = "<|endoftext|>"
#: How the mask id is rendered by `GPT2BPETokenizer.decode` (it is never produced by `encode`).
MASK_TEXT = "[MASK]"
GPT2_VOCAB_SIZE = 50257  # BPE tokens + <|endoftext|>
EOS_ID = 50256
MASK_ID = 50257


def _data_file(name: str) -> str:
    return str(resources.files("discdistill_text") / "data" / name)


class GPT2BPETokenizer(Tokenizer):
    """`discdistill.interfaces.Tokenizer` over GPT-2 BPE. Use `get_tokenizer()` (cached) to get one.

    ``encode`` adds no special tokens; a literal ``<|endoftext|>`` in the text becomes the EOS id,
    as with Hugging Face's GPT-2 tokenizer. ``decode`` renders EOS as ``<|endoftext|>`` and the mask
    id as ``[MASK]``, so partly denoised samples can be printed.
    """

    def __init__(self, backend: Any) -> None:
        self._backend = backend  # a tokenizers.Tokenizer

    @property
    def vocab_size(self) -> int:
        return GPT2_VOCAB_SIZE + 1

    @property
    def mask_id(self) -> int:
        return MASK_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return EOS_ID

    @property
    def pad_id(self) -> None:
        return None

    @property
    def backend(self) -> Any:
        """The underlying `tokenizers.Tokenizer` (GPT-2's 50,257 ids, no mask)."""
        return self._backend

    def encode(self, obj: Any) -> list[int]:
        if not isinstance(obj, str):
            raise TypeError(f"text tokenizer encodes str, got {type(obj).__name__}")
        return self._backend.encode(obj, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many strings at once (parallel in Rust): the fast path for corpora."""
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | Iterable[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
        if MASK_ID not in ids:
            return self._backend.decode(ids, skip_special_tokens=False)
        # Decode the runs between mask ids separately and put a visible placeholder for each mask.
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i == MASK_ID:
                if run:
                    pieces.append(self._backend.decode(run, skip_special_tokens=False))
                    run = []
                pieces.append(MASK_TEXT)
            else:
                run.append(i)
        if run:
            pieces.append(self._backend.decode(run, skip_special_tokens=False))
        return "".join(pieces)

    def decode_batch(self, rows: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(row) for row in rows]


@lru_cache(maxsize=1)
def get_tokenizer() -> GPT2BPETokenizer:
    """The GPT-2 tokenizer, built once per process from the vendored files (about 0.1 s)."""
    from tokenizers import AddedToken, Tokenizer as BackendTokenizer, decoders, models, pre_tokenizers

    backend = BackendTokenizer(models.BPE.from_file(_data_file("encoder.json"), _data_file("vocab.bpe")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    if backend.get_vocab_size() != GPT2_VOCAB_SIZE or backend.token_to_id(EOS_TOKEN) != EOS_ID:
        raise RuntimeError("the vendored GPT-2 vocabulary is damaged; reinstall discdistill-text")
    return GPT2BPETokenizer(backend)
