"""
Tests for L{txgate.net.service}: the forward service on a memory reactor,
and choosing the policy.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txgate.config import parse_config
from txgate.errors import ConfigError
from txgate.interfaces import PolicyEnvironment
from txgate.policy.categories import Categories
from txgate.tap import Prepared
from txgate.net.service import ForwardService, load_policy
from txgate.plugins import Plugin, Registry
from txgate.policy.default import DefaultPolicy
from txgate.testing import RecordingObserver

SERVICES = r"""
[[service]]
name = "v4"
kind = "explicit-http"
listen = "tcp:8080:interface=127.0.0.1"

[[service]]
name = "v6"
kind = "explicit-http"
listen = 'tcp:8443:interface=\:\:1'
"""


def _config(directory: str, txgate: str = "") -> Any:
    """A two-service config keeping its state and access log under C{directory}."""
    text = f'[txgate]\nstate_dir = "{directory}/state"\naccess_log = "{directory}/log/access.log"\n{txgate}\n'
    return parse_config(text + SERVICES, os.path.join(directory, "forward.toml"))


@attrs.frozen
class _Cpl:
    """A policy plugin reading C{.cpl} files: returns a deny-all policy it records."""

    name: str = "cpl"
    loaded: list[tuple[str, bool]] = attrs.Factory(list)

    def accepts(self, path: str) -> bool:
        return path.endswith(".cpl")

    def load(self, path: str, default_allow: bool, environment: object) -> DefaultPolicy:
        self.loaded.append((path, default_allow))
        return DefaultPolicy(False)


class ForwardServiceTests(SynchronousTestCase):
    """
    Starting the service makes the state directory and access log and
    listens on every service, logging the bound address.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.reactor = MemoryReactorClock()
        config = _config(self.dir)
        prepared = Prepared(config, Registry(()), DefaultPolicy(True), PolicyEnvironment(), Categories.from_lists({}), {})
        self.service = ForwardService(prepared, self.reactor)
        self.logged = RecordingObserver()
        globalLogPublisher.addObserver(self.logged)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged)

    def test_state_dir_and_access_log(self) -> None:
        """The state directory is created private (0700) and the access log file exists."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(os.stat(os.path.join(self.dir, "state")).st_mode & 0o777, 0o700)
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "log", "access.log")))

    def test_listens_on_each_service(self) -> None:
        """
        Each service listens on its endpoint and logs a C{listening:} line
        with its address; so does the admin console, on loopback by default.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.assertEqual(
            [(port, interface) for port, _, _, interface in self.reactor.tcpServers],
            [(8080, "127.0.0.1"), (8443, "::1"), (8081, "127.0.0.1")],
        )
        lines = [formatEvent(e) for e in self.logged.events if e.get("log_format", "").startswith("listening:")]
        self.assertEqual(
            lines,
            [
                # MemoryReactor reports every IPv4 listener as 0.0.0.0; a real
                # reactor reports the interface bound.
                "listening: service=v4 kind=explicit-http address=0.0.0.0:8080",
                "listening: service=v6 kind=explicit-http address=[::1]:8443",
                "listening: service=admin kind=admin address=0.0.0.0:8081",
            ],
        )

    def write_config(self, services: str, txgate: str = "") -> None:
        """Write the service's configuration file as an operator would before SIGHUP."""
        text = f'[txgate]\nstate_dir = "{self.dir}/state"\naccess_log = "{self.dir}/log/access.log"\n{txgate}\n'
        with open(os.path.join(self.dir, "forward.toml"), "w") as f:
            f.write(text + services)

    def test_reload_applies_options_and_policy(self) -> None:
        """
        A reload puts in force the new default policy and the options of
        services whose listener did not change (for new connections), and
        names what only a restart changes.
        """
        self.service.startService()
        self.addCleanup(self.service.stopService)
        changed = SERVICES.replace('listen = "tcp:8080:interface=127.0.0.1"', 'listen = "tcp:8080:interface=127.0.0.1"\nidle_timeout = 60')
        changed = changed.replace(r"tcp:8443:interface=\:\:1", r"tcp:8444:interface=\:\:1")
        self.write_config(changed, 'default_policy = "deny"')
        result = self.service.reload()
        self.assertTrue(result["ok"], result)
        self.assertIn("service v4 (idle_timeout)", result["message"])
        self.assertIn("needs a restart to change: service v6", result["message"])
        v4, v6 = self.service.factories["v4"], self.service.factories["v6"]
        self.assertEqual((v4.service.idle_timeout, v4.settings.idle_timeout), (60.0, 60.0))
        self.assertEqual(v6.service.listen, r"tcp:8443:interface=\:\:1")
        session = type("S", (), {"id": "s"})()
        self.assertFalse(self.service.policy.decide("request", session, {}).allow)

    def test_bad_reload_changes_nothing(self) -> None:
        """A configuration with a mistake is refused whole, saying why; the running one stays."""
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.write_config(SERVICES.replace('kind = "explicit-http"', 'kind = "nope"', 1), 'default_policy = "deny"')
        result = self.service.reload()
        self.assertFalse(result["ok"])
        self.assertIn("service[0].kind", result["message"])
        self.assertEqual(self.service.policy.last_reload["ok"], False)
        session = type("S", (), {"id": "s"})()
        self.assertTrue(self.service.policy.decide("request", session, {}).allow)

    def test_access_log_written_then_closed(self) -> None:
        """
        Transactions are written to the access log file as they end, also
        those ending after stopService (connections still open at shutdown);
        the file is closed after the reactor has shut down.
        """
        self.service.startService()
        self.service.access.record(
            time=0.0, session="a1b2c3-1", seq=1, client="127.0.0.1:40000", service="v4",
            client_protocol="http", tunneled=False, method="GET", target="http://origin.test/",
            status=200, verdict="allow", bytes_in=10, bytes_out=20, duration_ms=1, upstream="new", reason="",
        )
        with open(os.path.join(self.dir, "log", "access.log"), encoding="utf-8") as f:
            self.assertIn(" GET http://origin.test/ 200 allow ", f.read())
        access_file = self.service._access_file
        assert access_file is not None
        self.service.stopService()
        self.assertFalse(access_file.closed)
        self.service.access.record(
            time=0.0, session="a1b2c3-2", seq=1, client="127.0.0.1:40001", service="v4",
            client_protocol="tcp", tunneled=True, method="CONNECT", target="origin.test:443",
            status=200, verdict="allow", bytes_in=10, bytes_out=20, duration_ms=1, upstream="new", reason="",
        )
        [after_shutdown] = [t for t in self.reactor.triggers["after"]["shutdown"] if t[0] == self.service.close_access_log]
        after_shutdown[0]()
        self.assertTrue(access_file.closed)
        with open(os.path.join(self.dir, "log", "access.log"), encoding="utf-8") as f:
            self.assertIn(" CONNECT origin.test:443 200 allow ", f.read())


class LoadPolicyTests(SynchronousTestCase):
    """
    The policy is C{default_policy} alone, or the file named by
    C{txgate.policy} loaded by the plugin that reads it.
    """

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write("deny\n")
        return path

    def test_no_policy_file(self) -> None:
        """Without a policy file, the policy is C{default_policy}: allow or deny."""
        self.assertEqual(load_policy(_config(self.dir), Registry(())), DefaultPolicy(True))
        denying = _config(self.dir, 'default_policy = "deny"')
        self.assertEqual(load_policy(denying, Registry(())), DefaultPolicy(False))

    def test_not_a_file(self) -> None:
        """A C{txgate.policy} that is not a file is a config error on that key."""
        config = _config(self.dir, f'policy = "{self.dir}"')
        error = self.assertRaises(ConfigError, load_policy, config, Registry(()))
        self.assertEqual((error.path, error.key), (config.path, "txgate.policy"))
        self.assertIn("is not a file", error.message)

    def test_loaded_by_plugin(self) -> None:
        """A file a policy plugin accepts is loaded by it, with C{default_policy}."""
        path = self.write("local.cpl")
        cpl = _Cpl()
        policy = load_policy(_config(self.dir, f'policy = "{path}"'), Registry((Plugin("policy", "cpl", "test", cpl),)))
        self.assertEqual(policy, DefaultPolicy(False))
        self.assertEqual(cpl.loaded, [(path, True)])

    def test_no_plugin_reads_it(self) -> None:
        """A file no policy plugin accepts is a config error naming the file and the plugins there are."""
        path = self.write("local.rego")
        config = _config(self.dir, f'policy = "{path}"')
        error = self.assertRaises(ConfigError, load_policy, config, Registry((Plugin("policy", "cpl", "test", _Cpl()),)))
        self.assertEqual(error.key, "txgate.policy")
        self.assertEqual(error.message, f"no policy plugin reads {path!r} (policy plugins: cpl)")
