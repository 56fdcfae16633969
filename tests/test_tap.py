"""
Tests for L{txgate.tap} and the twistd plugin that names it.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txgate.net.service import ForwardService
from txgate.tap import Options, makeService

GOOD = """\
[txgate]
state_dir = "{dir}/var"
access_log = "{dir}/var/log/access.log"

[[service]]
name = "explicit"
kind = "explicit-http"
listen = "tcp:0:interface=127.0.0.1"
"""


class OptionsTests(SynchronousTestCase):
    """
    C{twistd txgate} needs a mode; C{forward} takes C{--config}.
    """

    def test_no_subcommand(self) -> None:
        """Without a mode, parsing fails with a usage error."""
        self.assertRaises(usage.UsageError, Options().parseOptions, [])

    def test_forward_config(self) -> None:
        """C{forward --config X} selects forward with that file."""
        options = Options()
        options.parseOptions(["forward", "--config", "etc/forward.toml"])
        self.assertEqual(options.subCommand, "forward")
        self.assertEqual(options.subOptions["config"], "etc/forward.toml")


class MakeServiceTests(SynchronousTestCase):
    """
    A bad configuration stops twistd with the errors and no traceback; a
    good one makes the forward service.
    """

    def setUp(self) -> None:
        # Short, so that --workers' control sockets (<state_dir>/run/worker-N.sock)
        # fit the 107-byte limit of UNIX socket paths wherever the checkout is.
        self.dir = tempfile.mkdtemp(prefix="txgate-tap-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def make(self, text: str | None, workers: str = "0") -> object:
        """Write C{text} (unless C{None}) as the config and call makeService on it."""
        path = os.path.join(self.dir, "forward.toml")
        if text is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
        options = Options()
        options.parseOptions(["forward", "--config", path, "--workers", workers])
        return makeService(options)

    def assert_refused(self, text: str | None, error: str) -> None:
        """makeService exits with status 1 and writes C{error} under the refusal line."""
        exit = self.assertRaises(SystemExit, self.make, text)
        self.assertEqual(exit.code, 1)
        path = os.path.join(self.dir, "forward.toml")
        self.assertEqual(self.stderr.getvalue(), f"txgate: refusing to start:\n{path}: {error}\n")
        self.assertNotIn("Traceback", self.stderr.getvalue())

    def test_missing_file(self) -> None:
        """A missing file is refused, naming the file."""
        self.assert_refused(None, "cannot read: No such file or directory")

    def test_bad_key(self) -> None:
        """A bad value is refused, naming the file and key."""
        self.assert_refused(
            GOOD.format(dir=self.dir).replace('"explicit-http"', '"socks"'),
            'service[0].kind: expected one of "explicit-http", "transparent", "tcp-tunnel", "socks5", got "socks"',
        )

    def test_workers(self) -> None:
        """
        C{--workers N} makes the main process's L{Supervisor} for N workers
        (after checking the whole configuration); 0 the service itself.
        """
        from txgate.net.workers import Supervisor

        service = self.make(GOOD.format(dir=self.dir), workers="3")
        self.assertIsInstance(service, Supervisor)
        self.assertEqual(service.count, 3)
        self.assertEqual([listener.name for listener in service.listeners], ["explicit"])
        self.assertRaises(SystemExit, self.make, GOOD.format(dir=self.dir).replace('"explicit-http"', '"x"'), "2")

    def test_workers_state_dir_too_long(self) -> None:
        """
        With workers, a state_dir too long for the control sockets' UNIX
        paths is refused up front, naming the key.
        """
        long_dir = os.path.join(self.dir, "s" * 120)
        text = GOOD.format(dir=self.dir).replace(f'state_dir = "{self.dir}/var"', f'state_dir = "{long_dir}"')
        exit = self.assertRaises(SystemExit, self.make, text, "2")
        self.assertEqual(exit.code, 1)
        self.assertIn("txgate.state_dir: too long for --workers", self.stderr.getvalue())

    def test_workers_option(self) -> None:
        """C{--workers} defaults to the number of cores and takes 0 to 256."""
        options = Options()
        options.parseOptions(["forward"])
        self.assertEqual(options.subOptions["workers"], os.cpu_count())
        for bad in ("-1", "x", "257"):
            self.assertRaises(usage.UsageError, Options().parseOptions, ["forward", "--workers", bad])

    def test_good_config(self) -> None:
        """A good config makes a L{ForwardService} with it, nothing on stderr."""
        service = self.make(GOOD.format(dir=self.dir))
        self.assertIsInstance(service, ForwardService)
        self.assertEqual([s.name for s in service.config.services], ["explicit"])
        self.assertEqual(self.stderr.getvalue(), "")


class PluginTests(SynchronousTestCase):
    """
    C{twistd txgate} is found through Twisted's plugin system.
    """

    def test_service_maker(self) -> None:
        """The plugin module holds a ServiceMaker C{txgate} for L{txgate.tap}."""
        from twisted.plugins import txgate_plugin

        self.assertTrue(IServiceMaker.providedBy(txgate_plugin.txgate))
        self.assertEqual(txgate_plugin.txgate.tapname, "txgate")
        self.assertEqual(txgate_plugin.txgate.module, "txgate.tap")

    def test_discovered(self) -> None:
        """C{getPlugins(IServiceMaker)} finds it, as twistd does."""
        self.assertIn("txgate", [maker.tapname for maker in getPlugins(IServiceMaker)])
