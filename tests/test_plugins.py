"""Plugin discovery through entry points, and the errors a user meets."""

import pytest

from discdistill import plugins
from discdistill.errors import DomainNotFoundError
from tests.conftest import install_plugin


def test_toy_plugin_is_found_through_its_entry_point(toy_plugin):
    entry = plugins.installed_domains()["counting"]
    assert entry.package == "toy-counting"
    domain = plugins.get_domain("counting")
    assert domain.tokenizer().vocab_size == 9
    assert plugins.get_domain("counting") is domain  # built once


def test_shipped_domains_come_from_their_distributions():
    plugins.refresh()
    found = plugins.installed_domains()
    assert found["text"].package == "discdistill-text"
    assert found["protein"].package == "discdistill-protein"


def test_unknown_domain_lists_the_installed_ones(toy_plugin):
    with pytest.raises(DomainNotFoundError, match=r"unknown domain 'nope'; installed domains: .*counting.*text"):
        plugins.get_domain("nope")


def test_a_plugin_whose_hook_raises_is_named(site_dir):
    source = "from discdistill.plugins import hookimpl\n\n@hookimpl\ndef discdistill_domains():\n    raise RuntimeError('boom')\n"
    install_plugin(site_dir, "toy-broken", "toy_broken", source, "broken")
    plugins.refresh()
    with pytest.warns(UserWarning, match=r"plugin 'broken' from package 'toy-broken' raised .*boom"):
        assert "counting" not in plugins.installed_domains() and "markov" in plugins.installed_domains()
    assert [b.package for b in plugins.registry().broken] == ["toy-broken"]


def test_a_plugin_that_fails_to_import_is_named(site_dir):
    install_plugin(site_dir, "toy-badimport", "toy_badimport", "import does_not_exist\n", "badimport")
    plugins.refresh()
    with pytest.warns(UserWarning, match=r"plugin 'badimport' from package 'toy-badimport' failed to load"):
        assert "markov" in plugins.installed_domains()  # the other domains still load


def test_a_plugin_returning_a_non_domain_is_refused(site_dir):
    source = "from discdistill.plugins import hookimpl\n\n@hookimpl\ndef discdistill_domains():\n    return [int]\n"
    install_plugin(site_dir, "toy-wrong", "toy_wrong", source, "wrong")
    plugins.refresh()
    with pytest.warns(UserWarning, match="not a Domain subclass"):
        plugins.installed_domains()


TOY_SAMPLER = '''
from pydantic import Field

from discdistill.config import StrictModel
from discdistill.plugins import hookimpl
from discdistill.samplers import Sampler
from discdistill.sampling import ancestral_step


class CountingRule:
    def __init__(self):
        self.calls = 0

    def __call__(self, z, logits, ctx):
        self.calls += 1
        return ancestral_step(z, logits, ctx)


class EveryStep(Sampler):
    """Ancestral steps that report one extra pass per step, plus a bonus: a sampler no core file knows."""
    name = "every-step"
    description = "toy"

    class Settings(StrictModel):
        bonus: int = Field(0, ge=0)

    def step_rule(self, checkpoint, device):
        return CountingRule()

    def reset(self, rule):
        rule.calls = 0

    def extra_passes(self, rule):
        return rule.calls + self.settings.bonus


@hookimpl
def discdistill_samplers():
    return [EveryStep]
'''


def test_a_plugin_sampler_works_in_sample_and_eval_without_editing_the_core(toy_plugin, tmp_path, capsys):
    import json

    from discdistill.checkpoint import save_pretrained
    from tests.conftest import run_cli, small_dit

    install_plugin(toy_plugin, "toy-sampler", "toy_sampler", TOY_SAMPLER, "sampler")
    plugins.refresh()
    save_pretrained(small_dit(9, 8, 8), tmp_path / "m")
    code, out, err = run_cli(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--steps", "3",
                              "--num-samples", "2", "--sampler", "every-step", "--sampler-set", "bonus=2"], capsys)
    assert code == 0, err
    assert "5 network passes added by every-step" in out and (tmp_path / "m" / "samples-3steps-every-step.txt").is_file()
    code, _, err = run_cli(["eval", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--steps", "3",
                            "--num-samples", "4", "--batch-size", "4", "--judge", "none", "--quiet", "--sampler",
                            "every-step", "--set", "sampler_settings.bonus=1", "--set", "elbo_blocks=0"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "m" / "eval-every-step" / "eval.json").read_text())
    assert report["rows"][0]["disc_passes"] == 4 and report["protocol"]["sampler"] == "every-step"
    code, _, err = run_cli(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--sampler",
                            "nope"], capsys)
    assert code == 1 and "unknown sampler 'nope'; installed samplers: ancestral, every-step, rgas" in err
    code, _, err = run_cli(["sample", "--domain", "counting", "--checkpoint", str(tmp_path / "m"), "--sampler",
                            "every-step", "--sampler-set", "bonus=-1"], capsys)
    assert code == 1 and "bonus: Input should be greater than or equal to 0" in err
    code, out, _ = run_cli(["domains"], capsys)
    assert "sampler every-step: toy (bonus)" in out and "sampler rgas:" in out
