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
