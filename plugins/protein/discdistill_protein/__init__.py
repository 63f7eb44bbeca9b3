"""discdistill-protein: the protein domain (tokenizer, FASTA IO, data, length handling, metrics)."""

from discdistill_protein.data import length_prefilled_init, sample_lengths
from discdistill_protein.domain import ProteinDomain
from discdistill_protein.fasta import ProteinRecord, read_fasta, write_fasta
from discdistill_protein.tokenizer import ProteinTokenizer

__all__ = [
    "ProteinDomain",
    "ProteinRecord",
    "ProteinTokenizer",
    "length_prefilled_init",
    "read_fasta",
    "sample_lengths",
    "write_fasta",
]
