"""discdistill: masked discrete diffusion teachers, DiDi-Instruct distillation, fast few-step sampling."""

from discdistill.checkpoint import load_pretrained, save_pretrained
from discdistill.config import ModelConfig, PretrainConfig, SamplingConfig, model_config_from_preset
from discdistill.diffusion import LogLinearSchedule, corrupt, mdlm_loss, posterior_probs, subs_log_probs
from discdistill.errors import (
    CheckpointError, ConfigError, DataError, DiscdistillError, DomainNotFoundError, ModelMismatchError, PluginError,
)
from discdistill.interfaces import Discriminator, Domain, MaskedDiffusionTeacher, Student, Tokenizer
from discdistill.models import DiT
from discdistill.plugins import get_domain, hookimpl, installed_domains
from discdistill.sampling import SampleOutput, ancestral_step, sample

__version__ = "0.1.0"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "DiT", "DiscdistillError", "Discriminator", "Domain",
    "DomainNotFoundError", "LogLinearSchedule", "MaskedDiffusionTeacher", "ModelConfig", "ModelMismatchError",
    "PluginError", "PretrainConfig", "SampleOutput", "SamplingConfig", "Student", "Tokenizer", "ancestral_step",
    "corrupt", "get_domain", "hookimpl", "installed_domains", "load_pretrained", "mdlm_loss",
    "model_config_from_preset", "posterior_probs", "sample", "save_pretrained", "subs_log_probs",
]
