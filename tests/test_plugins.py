"""
Tests for L{txgate.plugins}: built-in and drop-in plugins are found the same
way, and a drop-in is used by the pipeline with no change to txgate.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import txgate.dropins
from txgate.config import parse_config
from txgate.errors import ConfigError, ConfigErrors
from txgate.net.pipeline import Delegating, Pipeline, PipelineSettings
from txgate.net.pump import TunnelHandoff
from txgate.plugins import KINDS, Registry, builtin_plugin_dir, discover
from txgate.policy.default import DefaultPolicy
from txgate.session import Address, Session
from txgate.tap import prepare
from txgate.testing import HalfCloseableStringTransport, assert_provides, make_upstream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ECHO_PLUGIN = '''
"""A drop-in speaking a made-up protocol: HELO-ECHO, echoed back."""

from twisted.internet.protocol import Protocol
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import NEED_MORE, NOT_MINE, Detected, IDetector, IHandoff

GREETING = b"HELO-ECHO"


@implementer(IPlugin, IDetector)
class EchoDetector:
    name = "echo"
    priority = 50

    def detect(self, buffered):
        if buffered.startswith(GREETING):
            return Detected("echo")
        return NEED_MORE if GREETING.startswith(buffered) else NOT_MINE


@implementer(IPlugin, IDetector)
class EarlyDetector:
    name = "early"
    priority = 10

    def detect(self, buffered):
        return Detected("early") if buffered.startswith(b"EARLY") else NOT_MINE


class Echo(Protocol):
    def __init__(self, context):
        self.context = context

    def dataReceived(self, data):
        self.context.session.bytes_in += len(data)
        self.transport.write(data)


@implementer(IPlugin, IHandoff)
class EchoHandoff:
    name = "echo"
    protocols = frozenset({"echo"})
    tunneled = False

    def build(self, context):
        return Echo(context)

    def refusal(self, buffered, reason):
        return b""


echo_detector = EchoDetector()
early_detector = EarlyDetector()
echo_handoff = EchoHandoff()
'''

NAMED_HANDOFF = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import IHandoff


@implementer(IPlugin, IHandoff)
class Named:
    name = {name!r}
    protocols = frozenset({{"named"}})
    tunneled = True

    def build(self, context):
        raise NotImplementedError()

    def refusal(self, buffered, reason):
        return b""


handoff = Named()
'''

INCOMPLETE = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import IHandoff


@implementer(IPlugin, IHandoff)
class NoBuild:
    name = "nobuild"
    protocols = frozenset({"nobuild"})
    tunneled = True


handoff = NoBuild()
'''

BROKEN = '''
raise RuntimeError("plugin exploded on purpose")
'''


class DropInMixin:
    """
    Writes plugin modules with unique names into temporary directories and
    forgets them afterwards, so tests do not see each other's modules.
    """

    def plugin_dir(self, **modules: str) -> tuple[str, dict[str, str]]:
        """
        A new directory holding C{modules} (base name -> source), each saved
        under a unique module name.

        @return: the directory, and a map from base name to the module name used.
        """
        directory = os.path.abspath(self.mktemp())  # type: ignore[attr-defined]
        os.makedirs(directory)
        names = {}
        for base, source in modules.items():
            name = f"{base}_{uuid.uuid4().hex[:8]}"
            with open(os.path.join(directory, name + ".py"), "w", encoding="utf-8") as f:
                f.write(textwrap.dedent(source))
            names[base] = name
            self.addCleanup(sys.modules.pop, f"txgate.dropins.{name}", None)  # type: ignore[attr-defined]
        saved = list(txgate.dropins.__path__)
        self.addCleanup(txgate.dropins.__path__.__setitem__, slice(None), saved)  # type: ignore[attr-defined]
        return directory, names


class BuiltinTests(SynchronousTestCase):
    """
    The shipped plugins are found without any configuration.
    """

    def test_tunnel_found(self) -> None:
        """The tunnel handoff is registered from the shipped plugins directory."""
        registry = discover()
        [tunnel] = [p for p in registry.of_kind("handoff") if p.name == "tunnel"]
        self.assertEqual(tunnel.origin, os.path.join(builtin_plugin_dir(), "txgate_tunnel.py"))
        self.assertIsInstance(tunnel.provider, TunnelHandoff)
        self.assertEqual(registry.failures, ())

    def test_provides(self) -> None:
        """Every built-in plugin fully provides the interface of its kind."""
        for plugin in discover().plugins:
            assert_provides(self, KINDS[plugin.kind], plugin.provider)

    def test_handoff_for_tcp(self) -> None:
        """The tunnel carries tcp, and any protocol no handoff names."""
        registry = discover()
        self.assertIsInstance(registry.handoff_for("tcp"), TunnelHandoff)
        self.assertIsInstance(registry.handoff_for("unknown-proto"), TunnelHandoff)

    def test_no_tunnel(self) -> None:
        """Without a tunnel handoff, asking for one says the plugins are missing."""
        self.assertRaises(LookupError, Registry(()).handoff_for, "tcp")

    def test_dropin_cache_ignored(self) -> None:
        """The dropin.cache files Twisted writes beside plugin modules are kept out of git."""
        with open(os.path.join(REPO, ".gitignore"), encoding="utf-8") as f:
            self.assertIn("dropin.cache", f.read().split())


class DropInTests(DropInMixin, SynchronousTestCase):
    """
    A module in a plugin_path directory is a plugin like the built-in ones.
    """

    def test_found_with_origin(self) -> None:
        """A drop-in's detectors and handoff are registered, with the file that defines them."""
        directory, names = self.plugin_dir(echo=ECHO_PLUGIN)
        registry = discover([directory])
        origin = os.path.join(directory, names["echo"] + ".py")
        found = {(p.kind, p.name): p.origin for p in registry.plugins}
        self.assertEqual(found[("detector", "echo")], origin)
        self.assertEqual(found[("detector", "early")], origin)
        self.assertEqual(found[("handoff", "echo")], origin)
        self.assertIn(("handoff", "tunnel"), found)
        for plugin in registry.plugins:
            assert_provides(self, KINDS[plugin.kind], plugin.provider)

    def test_detectors_by_priority(self) -> None:
        """Detectors are ordered by priority, lowest first."""
        directory, _ = self.plugin_dir(echo=ECHO_PLUGIN)
        detectors = discover([directory]).detectors
        names = [d.name for d in detectors]
        self.assertLess(names.index("early"), names.index("echo"))
        self.assertEqual([d.priority for d in detectors], sorted(d.priority for d in detectors))

    def test_handoff_for_dropin_protocol(self) -> None:
        """The drop-in handoff carries its protocol; tcp still goes to the tunnel."""
        directory, _ = self.plugin_dir(echo=ECHO_PLUGIN)
        registry = discover([directory])
        self.assertEqual(registry.handoff_for("echo").name, "echo")
        self.assertIsInstance(registry.handoff_for("tcp"), TunnelHandoff)

    def run_pipeline(self, data: bytes, detect_protocol: bool = True):
        """
        Feed C{data} from a client through a L{Pipeline} using the plugins
        discovered with the echo drop-in.

        @return: the session, the client transport, the upstream and the registry.
        """
        directory, _ = self.plugin_dir(echo=ECHO_PLUGIN)
        registry = discover([directory])
        settings = PipelineSettings(
            registry=registry,
            policy=DefaultPolicy(True),
            reactor=MemoryReactorClock(),
            detect_protocol=detect_protocol,
            tunnel_on_protocol_error=False,
            idle_timeout=60.0,
        )
        session = Session("s-1", "explicit", Address("127.0.0.1", 5555), 0.0)
        upstream = make_upstream()
        client = HalfCloseableStringTransport()
        owner = Delegating()
        owner.makeConnection(client)
        owner.hand_over(Pipeline(settings, session, upstream, owner, lambda reason: None))
        owner.dataReceived(data)
        return session, client, upstream, registry

    def test_used_by_pipeline(self) -> None:
        """A drop-in detector names the stream and its handoff carries it, with no code change."""
        # A line end: until it arrives the built-in http detector (which runs
        # before this one) could still see an HTTP request line.
        session, client, upstream, registry = self.run_pipeline(b"HELO-ECHO hi\n")
        self.assertEqual(session.client_protocol, "echo")
        self.assertEqual(session.tunneled, registry.handoff_for("echo").tunneled)
        self.assertFalse(session.tunneled)
        self.assertEqual(client.value(), b"HELO-ECHO hi\n")
        self.assertEqual(upstream.transport.value(), b"")

    def test_detection_off_tunnels(self) -> None:
        """With detect_protocol off, the same greeting is tunneled upstream as tcp."""
        session, client, upstream, _ = self.run_pipeline(b"HELO-ECHO hi", detect_protocol=False)
        self.assertEqual((session.client_protocol, session.tunneled), ("tcp", True))
        self.assertEqual(upstream.transport.value(), b"HELO-ECHO hi")
        self.assertEqual(client.value(), b"")


class DiscoveryErrorTests(DropInMixin, SynchronousTestCase):
    """
    Mistakes in plugin directories are reported, naming what to fix.
    """

    def test_duplicate_names(self) -> None:
        """Two handoffs with one name: a ConfigError naming both files."""
        first, one = self.plugin_dir(a=NAMED_HANDOFF.format(name="twin"))
        second, two = self.plugin_dir(b=NAMED_HANDOFF.format(name="twin"))
        error = self.assertRaises(ConfigError, discover, [first, second], "/etc/txgate/forward.toml")
        rendered = str(error)
        self.assertTrue(rendered.startswith("/etc/txgate/forward.toml: txgate.plugin_path: "), rendered)
        self.assertIn("'twin'", rendered)
        self.assertIn(os.path.join(first, one["a"] + ".py"), rendered)
        self.assertIn(os.path.join(second, two["b"] + ".py"), rendered)

    def test_same_name_other_kind(self) -> None:
        """A detector and a handoff may share a name."""
        directory, _ = self.plugin_dir(echo=ECHO_PLUGIN)
        names = [(p.kind, p.name) for p in discover([directory]).plugins]
        self.assertIn(("detector", "echo"), names)
        self.assertIn(("handoff", "echo"), names)

    def test_not_a_directory(self) -> None:
        """A plugin_path entry that is missing or a file is a ConfigError at its index."""
        directory, _ = self.plugin_dir()
        a_file = os.path.join(directory, "notes.txt")
        with open(a_file, "w") as f:
            f.write("not plugins\n")
        for bad in (a_file, os.path.join(directory, "missing")):
            error = self.assertRaises(ConfigError, discover, [bad], "cfg.toml")
            self.assertEqual(error.key, "txgate.plugin_path[0]")
            self.assertIn(repr(bad), str(error))
            self.assertIn("not a directory", str(error))
        error = self.assertRaises(ConfigError, discover, [directory, a_file], "cfg.toml")
        self.assertEqual(error.key, "txgate.plugin_path[1]")

    def test_import_failure(self) -> None:
        """A module that fails to import is a failure by module name and error; the others load."""
        directory, names = self.plugin_dir(broken=BROKEN, echo=ECHO_PLUGIN)
        registry = discover([directory])
        [failure] = registry.failures
        self.assertEqual(failure.module, names["broken"])
        self.assertEqual(failure.origin, os.path.join(directory, names["broken"] + ".py"))
        self.assertIn("RuntimeError: plugin exploded on purpose", failure.error)
        self.assertTrue({"tunnel", "echo", "early"} <= registry.names())
        # twisted.plugin.getCache also logs the traceback (once per kind).
        self.assertTrue(self.flushLoggedErrors(RuntimeError))

    def test_import_failure_again(self) -> None:
        """A failed module is reported on every discovery, not only the first."""
        directory, names = self.plugin_dir(broken=BROKEN)
        discover([directory])
        self.assertEqual([f.module for f in discover([directory]).failures], [names["broken"]])
        self.flushLoggedErrors(RuntimeError)

    def test_incomplete_provider(self) -> None:
        """A plugin declaring an interface it does not fully provide is a failure, not registered."""
        directory, names = self.plugin_dir(incomplete=INCOMPLETE)
        registry = discover([directory])
        [failure] = registry.failures
        self.assertEqual(failure.module, names["incomplete"])
        self.assertIn("does not provide IHandoff", failure.error)
        self.assertIn("build", failure.error)
        self.assertNotIn("nobuild", registry.names())

    def test_module_name_clash(self) -> None:
        """
        A drop-in module named like a built-in one would be shadowed by it
        (Python imports the first), so it is refused, naming both files.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        clash = os.path.join(directory, "txgate_tunnel.py")
        with open(clash, "w", encoding="utf-8") as f:
            f.write(NAMED_HANDOFF.format(name="clash"))
        self.addCleanup(txgate.dropins.__path__.__setitem__, slice(None), list(txgate.dropins.__path__))
        error = self.assertRaises(ConfigError, discover, [directory], "cfg.toml")
        self.assertEqual(error.key, "txgate.plugin_path[0]")
        self.assertIn(clash, str(error))
        self.assertIn(os.path.join(builtin_plugin_dir(), "txgate_tunnel.py"), str(error))

    def test_required_plugin_failed(self) -> None:
        """prepare() refuses a config requiring a plugin that failed, giving the error."""
        directory, names = self.plugin_dir(broken=BROKEN)
        config = parse_config(
            f"[txgate]\nplugin_path = [{directory!r}]\nrequired_plugins = [{names['broken']!r}]\n"
            '[[service]]\nname = "x"\nkind = "explicit-http"\nlisten = "tcp:0"\n',
            "/etc/txgate/forward.toml",
        )
        errors = self.assertRaises(ConfigErrors, prepare, config)
        [error] = errors.errors
        self.assertEqual(error.key, "txgate.required_plugins")
        self.assertIn(repr(names["broken"]), str(error))
        self.assertIn("plugin exploded on purpose", str(error))
        self.flushLoggedErrors(RuntimeError)

    def test_required_plugin_present(self) -> None:
        """prepare() accepts a config whose required plugins all loaded."""
        directory, _ = self.plugin_dir(echo=ECHO_PLUGIN)
        config = parse_config(
            f"[txgate]\nplugin_path = [{directory!r}]\nrequired_plugins = ['echo', 'tunnel']\n"
            '[[service]]\nname = "x"\nkind = "explicit-http"\nlisten = "tcp:0"\n',
            "/etc/txgate/forward.toml",
        )
        self.assertTrue({"echo", "tunnel"} <= prepare(config).registry.names())
