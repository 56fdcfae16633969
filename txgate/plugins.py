# -*- test-case-name: tests.test_plugins -*-
"""
Finding plugins: built-in ones in the shipped C{plugins/} directory and
third-party ones in the directories named by C{plugin_path}, all through
L{twisted.plugin.getPlugins} on the L{txgate.dropins} package.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from typing import Iterable, Sequence

import attrs
from twisted.plugin import IPlugin, getPlugins
from twisted.python.modules import getModule
from zope.interface.verify import verifyObject

import txgate
import txgate.dropins
from txgate.errors import ConfigError
from txgate.interfaces import IDetector, IHandoff, IInterceptor, IPolicyProvider

__all__ = ["Plugin", "Registry", "discover", "builtin_plugin_dir", "KINDS"]

KINDS = {
    "detector": IDetector,
    "interceptor": IInterceptor,
    "handoff": IHandoff,
    "policy": IPolicyProvider,
}
"""The plugin kinds, by the name C{txgate plugins} prints."""


@attrs.frozen
class Plugin:
    """
    One registered plugin.

    @ivar origin: the file of the module that defines it.
    """

    kind: str
    name: str
    origin: str
    provider: object


@attrs.frozen
class Failure:
    """A plugin module that could not be used, and why."""

    module: str
    origin: str
    error: str


@attrs.frozen
class Registry:
    """
    Every plugin found, by kind; detectors sorted by priority.
    """

    plugins: tuple[Plugin, ...]
    failures: tuple[Failure, ...] = ()
    # Grouped once: every new stream asks for its detectors and handoff.
    _by_kind: dict[str, tuple[Plugin, ...]] = attrs.field(init=False, eq=False, repr=False)
    _detectors: tuple[IDetector, ...] = attrs.field(init=False, eq=False, repr=False)

    @_by_kind.default
    def _group(self) -> dict[str, tuple[Plugin, ...]]:
        kinds: dict[str, list[Plugin]] = {}
        for plugin in self.plugins:
            kinds.setdefault(plugin.kind, []).append(plugin)
        return {kind: tuple(found) for kind, found in kinds.items()}

    @_detectors.default
    def _sort_detectors(self) -> tuple[IDetector, ...]:
        found = [p.provider for p in self._by_kind.get("detector", ())]
        return tuple(sorted(found, key=lambda d: (d.priority, d.name)))  # type: ignore[attr-defined]

    def of_kind(self, kind: str) -> tuple[Plugin, ...]:
        return self._by_kind.get(kind, ())

    @property
    def detectors(self) -> tuple[IDetector, ...]:
        return self._detectors

    def handoff_for(self, protocol: str) -> IHandoff:
        """
        The handoff carrying C{protocol}; the tunnel (which carries C{tcp})
        when no handoff names it.

        @raise LookupError: when not even a tunnel handoff is registered.
        """
        fallback = None
        for plugin in self.of_kind("handoff"):
            handoff = plugin.provider
            if protocol in handoff.protocols:  # type: ignore[attr-defined]
                return handoff  # type: ignore[return-value]
            if "tcp" in handoff.protocols:  # type: ignore[attr-defined]
                fallback = handoff
        if fallback is None:
            raise LookupError("no handoff plugin carries 'tcp' (is plugins/ installed?)")
        return fallback  # type: ignore[return-value]

    def interceptor_for(self, protocol: str) -> IInterceptor | None:
        """The interceptor of C{protocol} (C{ssl}), or C{None} when none is installed."""
        for plugin in self.of_kind("interceptor"):
            if protocol in plugin.provider.protocols:  # type: ignore[attr-defined]
                return plugin.provider  # type: ignore[return-value]
        return None

    def names(self) -> set[str]:
        return {p.name for p in self.plugins}


def builtin_plugin_dir() -> str:
    """
    The shipped C{plugins/} directory: the C{txgate_plugins} package a wheel
    installs, or C{plugins/} beside C{txgate/} in a checkout.
    """
    spec = importlib.util.find_spec("txgate_plugins")
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    package = os.path.dirname(os.path.abspath(txgate.__file__))
    return os.path.join(os.path.dirname(package), "plugins")


def _set_search_path(directories: Sequence[str]) -> None:
    paths = [os.path.abspath(d) for d in directories]
    txgate.dropins.__path__[:] = [os.path.dirname(txgate.dropins.__file__)] + paths


def _check_module_names(directories: Sequence[str], config_path: str) -> None:
    """
    Refuse two plugin modules of one name: Python imports only the first, so
    the other would be silently ignored.

    @raise ConfigError: naming both files and the C{plugin_path} entry.
    """
    first: dict[str, str] = {}
    for index, directory in enumerate(directories):
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            if entry.endswith(".py"):
                name = entry[:-3]
            elif os.path.isfile(os.path.join(path, "__init__.py")):
                name = entry
            else:
                continue
            if name.startswith("_"):
                continue
            if name in first:
                key = f"txgate.plugin_path[{index - 1}]" if index else "txgate.plugin_path"
                raise ConfigError(
                    config_path, key, f"plugin module {path} has the same name as {first[name]}; rename one"
                )
            first[name] = path


def _preload() -> tuple[list[Failure], dict[int, str]]:
    """
    Import every plugin module once, so a module that fails is reported by
    name with its error (getPlugins would only log and skip it), and learn
    which file defines each plugin object.

    @return: the failures, and a map from C{id()} of each module-level plugin
        object to its module's file.
    """
    failures = []
    origins: dict[int, str] = {}
    for module in getModule("txgate.dropins").iterModules():
        name = module.name
        if name.rsplit(".", 1)[-1].startswith("_"):
            continue
        try:
            loaded = importlib.import_module(name)
        except Exception as e:
            last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
            where = f" ({last.filename}:{last.lineno})" if last else ""
            failures.append(
                Failure(name.rsplit(".", 1)[-1], module.filePath.path, f"{type(e).__name__}: {e}{where}")
            )
            sys.modules.pop(name, None)
            continue
        for value in vars(loaded).values():
            if IPlugin.providedBy(value):
                origins[id(value)] = module.filePath.path
    return failures, origins


def _name_of(provider: object) -> str:
    return str(getattr(provider, "name", type(provider).__name__))


def discover(plugin_path: Iterable[str] = (), config_path: str = "<defaults>") -> Registry:
    """
    Find every plugin in the shipped directory and C{plugin_path}.

    @raise ConfigError: a C{plugin_path} entry is not a directory, or two
        plugins of one kind share a name.
    """
    extra = list(plugin_path)
    for index, directory in enumerate(extra):
        if not os.path.isdir(directory):
            raise ConfigError(
                config_path, f"txgate.plugin_path[{index}]", f"{directory!r} is not a directory"
            )
    directories = [builtin_plugin_dir(), *extra]
    _check_module_names(directories, config_path)
    _set_search_path(directories)
    failures, origins = _preload()
    plugins: list[Plugin] = []
    seen: dict[tuple[str, str], str] = {}
    # One getPlugins pass for every kind: each pass retries (and logs) the
    # import of a module that fails, so a pass per kind would log it four times.
    found = list(getPlugins(IPlugin, txgate.dropins))
    for kind, interface in KINDS.items():
        for provider in found:
            if not interface.providedBy(provider):
                continue
            origin = origins.get(id(provider))
            if origin is None:
                continue  # a module that failed to import (already reported)
            try:
                verifyObject(interface, provider)
            except Exception as e:
                module_name = os.path.splitext(os.path.basename(origin))[0]
                failures.append(Failure(module_name, origin, f"does not provide {interface.__name__}: {e}"))
                continue
            name = _name_of(provider)
            key = (kind, name)
            if key in seen:
                raise ConfigError(
                    config_path,
                    "txgate.plugin_path",
                    f"two {kind} plugins are named {name!r}: {seen[key]} and {origin}",
                )
            seen[key] = origin
            plugins.append(Plugin(kind, name, origin, provider))
    return Registry(tuple(plugins), tuple(failures))
