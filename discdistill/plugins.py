"""Plugins: pluggy hook specifications, entry-point discovery, and the domain registry.

A plugin is any installed distribution with an entry point in the ``discdistill`` group that names a
module implementing the hooks below (the pytest / datasette convention)::

    # pyproject.toml of the plugin
    [project.entry-points.discdistill]
    mydomain = "my_package.plugin"

    # my_package/plugin.py
    from discdistill.plugins import hookimpl

    @hookimpl
    def discdistill_domains():
        return [MyDomain]
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import pluggy

from discdistill.backbones import Backbone, builtin_backbones
from discdistill.config import StrictModel, build
from discdistill.errors import ConfigError, DomainNotFoundError, PluginError
from discdistill.interfaces import Domain
from discdistill.samplers import BUILTIN_SAMPLERS, Sampler

PROJECT = "discdistill"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Modules of the core that register like plugins (the synthetic domains used to test the method).
BUILTIN_PLUGINS: tuple[str, ...] = ("discdistill.builtin.markov",)


class DomainHookSpecs:
    @hookspec
    def discdistill_domains(self) -> list[type[Domain]]:
        """Return the `Domain` subclasses this plugin provides (classes: they are built lazily)."""

    @hookspec
    def discdistill_samplers(self) -> list[type[Sampler]]:
        """Return the `discdistill.samplers.Sampler` subclasses this plugin provides."""

    @hookspec
    def discdistill_backbones(self) -> list[Backbone]:
        """Return the `discdistill.backbones.Backbone` entries (network classes) this plugin provides."""


@dataclass(frozen=True)
class DomainEntry:
    name: str
    domain_class: type[Domain]
    package: str  # the distribution (or module) that provides it


def _plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(DomainHookSpecs)
    return manager


@dataclass(frozen=True)
class BrokenPlugin:
    name: str
    package: str
    problem: str  # one line: what failed


@dataclass(frozen=True)
class Registry:
    domains: dict[str, DomainEntry]
    broken: tuple[BrokenPlugin, ...]  # plugins that failed; the others' domains still load
    samplers: dict[str, type[Sampler]]
    backbones: dict[str, Backbone]


def _load_entry_points(manager: pluggy.PluginManager, broken: list[BrokenPlugin]) -> dict[str, str]:
    """Register every entry point of the group; return plugin name -> distribution name. A plugin that
    fails to import is recorded in ``broken`` (named with its package), not raised."""
    sources: dict[str, str] = {}
    for module_name in BUILTIN_PLUGINS:
        module = __import__(module_name, fromlist=["_"])
        manager.register(module, name=module_name)
        sources[module_name] = f"{PROJECT} (built-in)"
    for entry_point in importlib.metadata.entry_points(group=PROJECT):
        dist = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            plugin: ModuleType = entry_point.load()
        except Exception as err:  # noqa: BLE001 - any import failure must name the plugin, not stop the others
            broken.append(BrokenPlugin(entry_point.name, dist, f"failed to load: {err!r}"))
            continue
        if manager.is_registered(plugin):
            continue
        manager.register(plugin, name=entry_point.name)
        sources[entry_point.name] = dist
    return sources


def _domains_of(plugin: object) -> list[type[Domain]]:
    impl = getattr(plugin, "discdistill_domains", None)  # a plugin may implement other hooks only
    if impl is None:
        return []
    try:
        classes = impl()
    except Exception as err:  # noqa: BLE001 - surface which plugin broke, whatever it raised
        raise PluginError(f"raised while listing domains: {err!r}") from err
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Domain)):
            raise PluginError(f"returned {cls!r}, which is not a Domain subclass")
    return list(classes)


def collect_domains(manager: pluggy.PluginManager, sources: dict[str, str],
                    broken: list[BrokenPlugin]) -> dict[str, DomainEntry]:
    """Ask each plugin for its domains, one by one; a failing plugin goes to ``broken``, the rest load.
    Two plugins providing one domain name is an error (which one is meant cannot be guessed)."""
    domains: dict[str, DomainEntry] = {}
    for plugin in manager.get_plugins():
        plugin_name = manager.get_name(plugin)
        package = sources.get(plugin_name, plugin_name)
        try:
            classes = _domains_of(plugin)
        except PluginError as err:
            broken.append(BrokenPlugin(plugin_name, package, str(err)))
            continue
        for cls in classes:
            if cls.name in domains and domains[cls.name].domain_class is not cls:
                raise PluginError(f"domain {cls.name!r} is provided twice: by {domains[cls.name].package!r} "
                                  f"and {package!r}; uninstall one")
            domains[cls.name] = DomainEntry(cls.name, cls, package)
    return domains


def collect_named(manager: pluggy.PluginManager, sources: dict[str, str], broken: list[BrokenPlugin], *,
                  hook: str, what: str, builtins: list[Any], valid: Callable[[Any], bool]) -> dict[str, Any]:
    """``builtins``, then every plugin's entries from ``hook`` (each with a ``name``), keyed by name.

    A plugin whose hook raises or returns an entry ``valid`` refuses goes to ``broken`` (the others
    still load); two different entries under one name are an error (which one is meant cannot be guessed).
    """
    entries: dict[str, Any] = {entry.name: entry for entry in builtins}
    for plugin in manager.get_plugins():
        impl = getattr(plugin, hook, None)  # every hook is optional
        if impl is None:
            continue
        name = manager.get_name(plugin)
        try:
            provided = list(impl())
            bad = [entry for entry in provided if not valid(entry)]
            if bad:
                raise PluginError(f"returned {bad[0]!r}, which is not a {what}")
        except Exception as err:  # noqa: BLE001 - name the plugin, keep the others
            broken.append(BrokenPlugin(name, sources.get(name, name), f"{hook}: {err}"))
            continue
        for entry in provided:
            if entry.name in entries and entries[entry.name] != entry:
                raise PluginError(f"{what} {entry.name!r} is provided twice (by {sources.get(name, name)!r} and "
                                  "another package or the core); uninstall one")
            entries[entry.name] = entry
    return entries


def get_sampler(name: str, settings: Mapping[str, Any] | None = None) -> Sampler:
    """The sampler called ``name`` with ``settings`` validated; unknown names list the installed ones."""
    samplers = registry().samplers
    if name not in samplers:
        raise ConfigError(f"unknown sampler {name!r}; installed samplers: {', '.join(sorted(samplers))}")
    cls = samplers[name]
    unknown = sorted(set(settings or {}) - set(cls.Settings.model_fields))
    if unknown:
        valid = ", ".join(sorted(cls.Settings.model_fields)) or "none"
        raise ConfigError(f"sampler {name!r} has no setting {', '.join(map(repr, unknown))}; its settings: {valid}")
    return cls(build(cls.Settings, dict(settings or {})))


@lru_cache(maxsize=1)
def registry() -> Registry:
    """Every installed plugin's domains, and the plugins that failed (cached; `refresh()` clears it).
    Each broken plugin is reported once as a warning naming its package."""
    manager, broken = _plugin_manager(), []
    sources = _load_entry_points(manager, broken)
    domains = collect_domains(manager, sources, broken)
    samplers = collect_named(manager, sources, broken, hook="discdistill_samplers", what="Sampler subclass",
                             builtins=list(BUILTIN_SAMPLERS),
                             valid=lambda cls: isinstance(cls, type) and issubclass(cls, Sampler))
    backbones = collect_named(manager, sources, broken, hook="discdistill_backbones",
                              what="discdistill.backbones.Backbone", builtins=builtin_backbones(),
                              valid=lambda entry: isinstance(entry, Backbone))
    for plugin in broken:
        warnings.warn(f"discdistill plugin {plugin.name!r} from package {plugin.package!r} {plugin.problem}; "
                      "its domains are unavailable", stacklevel=2)
    return Registry(domains, tuple(broken), samplers, backbones)


def installed_domains() -> dict[str, DomainEntry]:
    """Name -> entry for every domain of every installed (working) plugin."""
    return registry().domains


def refresh() -> None:
    registry.cache_clear()
    _domain_instance.cache_clear()


def domain_class(name: str) -> type[Domain]:
    """The `Domain` subclass called ``name``; unknown names list the installed ones."""
    domains = installed_domains()
    if name not in domains:
        listing = ", ".join(sorted(domains)) or "none (install discdistill-text or another plugin)"
        broken = "".join(f"; plugin {b.name!r} ({b.package}) is broken: `discdistill domains`" for b in registry().broken)
        raise DomainNotFoundError(f"unknown domain {name!r}; installed domains: {listing}{broken}")
    return domains[name].domain_class


def domain_settings(name: str, values: Mapping[str, Any] | None = None) -> StrictModel:
    """``values`` validated as domain ``name``'s settings; an unknown key is named with the valid ones."""
    settings_model = domain_class(name).Settings
    unknown = sorted(set(values or {}) - set(settings_model.model_fields))
    if unknown:
        valid = ", ".join(sorted(settings_model.model_fields)) or "none"
        raise ConfigError(f"domain {name!r} has no setting {', '.join(map(repr, unknown))}; its settings: {valid}")
    return build(settings_model, dict(values or {}))


def get_domain(name: str, settings: Mapping[str, Any] | None = None) -> Domain:
    """The domain called ``name`` with ``settings`` (defaults for the rest), instantiated once per settings."""
    validated = domain_settings(name, settings)
    return _domain_instance(name, validated.model_dump_json())


@lru_cache(maxsize=None)
def _domain_instance(name: str, settings_json: str) -> Domain:
    cls = domain_class(name)
    return cls(cls.Settings.model_validate_json(settings_json))
