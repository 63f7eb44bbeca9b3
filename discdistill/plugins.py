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
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import pluggy

from discdistill.errors import DomainNotFoundError, PluginError
from discdistill.interfaces import Domain

PROJECT = "discdistill"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Modules of the core that register like plugins (the synthetic domains used to test the method).
BUILTIN_PLUGINS: tuple[str, ...] = ("discdistill.builtin.markov",)


class DomainHookSpecs:
    @hookspec
    def discdistill_domains(self) -> list[type[Domain]]:
        """Return the `Domain` subclasses this plugin provides (classes: they are built lazily)."""


@dataclass(frozen=True)
class DomainEntry:
    name: str
    domain_class: type[Domain]
    package: str  # the distribution (or module) that provides it


def _plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(DomainHookSpecs)
    return manager


def _load_entry_points(manager: pluggy.PluginManager) -> dict[str, str]:
    """Register every entry point of the group; return plugin name -> distribution name."""
    sources: dict[str, str] = {}
    for module_name in BUILTIN_PLUGINS:
        module = __import__(module_name, fromlist=["_"])
        manager.register(module, name=module_name)
        sources[module_name] = f"{PROJECT} (built-in)"
    for entry_point in importlib.metadata.entry_points(group=PROJECT):
        dist = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        try:
            plugin: ModuleType = entry_point.load()
        except Exception as err:  # noqa: BLE001 - any import failure must name the plugin
            raise PluginError(f"plugin {entry_point.name!r} from package {dist!r} failed to load: {err!r}") from err
        if manager.is_registered(plugin):
            continue
        manager.register(plugin, name=entry_point.name)
        sources[entry_point.name] = dist
    return sources


def collect_domains(manager: pluggy.PluginManager, sources: dict[str, str]) -> dict[str, DomainEntry]:
    """Ask each plugin for its domains, one by one, so a failing plugin is named in the error."""
    domains: dict[str, DomainEntry] = {}
    for plugin in manager.get_plugins():
        plugin_name = manager.get_name(plugin)
        package = sources.get(plugin_name, plugin_name)
        impl = getattr(plugin, "discdistill_domains", None)
        if impl is None:
            continue
        try:
            classes = impl()
        except Exception as err:  # noqa: BLE001 - surface which plugin broke, whatever it raised
            raise PluginError(f"plugin {plugin_name!r} from package {package!r} raised while listing domains: "
                              f"{err!r}") from err
        for cls in classes:
            if not (isinstance(cls, type) and issubclass(cls, Domain)):
                raise PluginError(f"plugin {plugin_name!r} from package {package!r} returned {cls!r}, "
                                  "which is not a Domain subclass")
            if cls.name in domains and domains[cls.name].domain_class is not cls:
                raise PluginError(f"domain {cls.name!r} is provided twice: by {domains[cls.name].package!r} "
                                  f"and {package!r}; uninstall one")
            domains[cls.name] = DomainEntry(cls.name, cls, package)
    return domains


@lru_cache(maxsize=1)
def installed_domains() -> dict[str, DomainEntry]:
    """Name -> entry for every domain of every installed plugin (cached; `refresh()` clears it)."""
    manager = _plugin_manager()
    return collect_domains(manager, _load_entry_points(manager))


def refresh() -> None:
    installed_domains.cache_clear()
    get_domain.cache_clear()


@lru_cache(maxsize=None)
def get_domain(name: str) -> Domain:
    """The domain called ``name``, instantiated once; unknown names list the installed ones."""
    domains = installed_domains()
    if name not in domains:
        listing = ", ".join(sorted(domains)) or "none (install discdistill-text or another plugin)"
        raise DomainNotFoundError(f"unknown domain {name!r}; installed domains: {listing}")
    return domains[name].domain_class()
