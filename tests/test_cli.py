"""
Tests for L{txgate.cli}: the operator's C{txgate} command.
"""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from io import StringIO

from twisted.trial.unittest import SynchronousTestCase

import txgate.dropins
from txgate.cli import main
from txgate.plugins import builtin_plugin_dir

SERVICE = '[[service]]\nname = "explicit"\nkind = "explicit-http"\nlisten = "tcp:0:interface=127.0.0.1"\n'

DROP_IN = '''
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import NOT_MINE, IDetector


@implementer(IPlugin, IDetector)
class Nothing:
    name = "nothing"
    priority = 90

    def detect(self, buffered):
        return NOT_MINE


detector = Nothing()
'''


class _CommandTestCase(SynchronousTestCase):
    """
    Shared helpers: run the command, write files.
    """

    def run_txgate(self, *argv: str) -> tuple[int, str, str]:
        """Run C{txgate argv}; return its exit status, stdout and stderr."""
        out, err = StringIO(), StringIO()
        status = main(list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()

    def write(self, text: str, name: str = "forward.toml", directory: str | None = None) -> str:
        """Write C{text} to a new file and return its path."""
        if directory is None:
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def plugin_dir(self, **modules: str) -> tuple[str, dict[str, str]]:
        """
        A directory of plugin modules under unique names, forgotten after the
        test; returns it and a map from base name to module name.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        names = {}
        for base, source in modules.items():
            names[base] = f"{base}_{uuid.uuid4().hex[:8]}"
            self.write(source, names[base] + ".py", directory)
            self.addCleanup(sys.modules.pop, f"txgate.dropins.{names[base]}", None)
        self.addCleanup(txgate.dropins.__path__.__setitem__, slice(None), list(txgate.dropins.__path__))
        return directory, names


def _rows(listing: str) -> list[list[str]]:
    """The rows of a C{txgate plugins} listing as [kind, name, origin], header dropped."""
    lines = listing.splitlines()
    assert lines[0].split() == ["KIND", "NAME", "ORIGIN"], lines[0]
    return [line.split(None, 2) for line in lines[1:]]


class CheckConfigTests(_CommandTestCase):
    """
    C{txgate check-config PATH}: 0 and "PATH: ok", or 1 and one line per error.
    """

    def test_good(self) -> None:
        """A valid file: exit 0 and "PATH: ok"."""
        path = self.write(SERVICE)
        self.assertEqual(self.run_txgate("check-config", path), (0, f"{path}: ok\n", ""))

    def test_bad(self) -> None:
        """Each mistake is one line on stderr naming the file and key; exit 1."""
        path = self.write('[txgate]\ndefault_policy = "permit"\n' + SERVICE + "idle_timeout = -1\n")
        status, out, err = self.run_txgate("check-config", path)
        self.assertEqual((status, out), (1, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, msg=err)
        self.assertTrue(lines[0].startswith(f"{path}: txgate.default_policy: "), msg=err)
        self.assertTrue(lines[1].startswith(f"{path}: service[0].idle_timeout: "), msg=err)
        self.assertNotIn("Traceback", err)

    def test_missing_file(self) -> None:
        """A file that cannot be read: exit 1 naming it, no traceback."""
        path = os.path.abspath(self.mktemp())
        status, out, err = self.run_txgate("check-config", path)
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{path}: cannot read"), msg=err)

    def test_several_files(self) -> None:
        """Every file is checked; one bad file makes the exit status 1."""
        good = self.write(SERVICE)
        bad = self.write("[[service]]\n")
        status, out, err = self.run_txgate("check-config", good, bad)
        self.assertEqual((status, out), (1, f"{good}: ok\n"))
        self.assertIn(f"{bad}: service[0].name: required key is missing", err)

    def test_required_plugin_missing(self) -> None:
        """A required plugin that is not installed: exit 1 naming it."""
        path = self.write('[txgate]\nrequired_plugins = ["sipgate"]\n' + SERVICE)
        status, out, err = self.run_txgate("check-config", path)
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"{path}: txgate.required_plugins: ", err)
        self.assertIn("'sipgate'", err)


class PluginsTests(_CommandTestCase):
    """
    C{txgate plugins [--config PATH]}: kind, name and origin of every plugin.
    """

    def test_builtin(self) -> None:
        """Without a config, the built-in tunnel handoff is listed with its file."""
        status, out, err = self.run_txgate("plugins")
        self.assertEqual((status, err), (0, ""))
        self.assertIn(["handoff", "tunnel", os.path.join(builtin_plugin_dir(), "txgate_tunnel.py")], _rows(out))

    def test_plugin_path(self) -> None:
        """With --config, modules in its plugin_path are listed with their files."""
        directory, names = self.plugin_dir(nothing=DROP_IN)
        config = self.write(f"[txgate]\nplugin_path = [{directory!r}]\n" + SERVICE)
        status, out, err = self.run_txgate("plugins", "--config", config)
        self.assertEqual((status, err), (0, ""))
        rows = _rows(out)
        self.assertIn(["detector", "nothing", os.path.join(directory, names["nothing"] + ".py")], rows)
        self.assertIn("tunnel", [row[1] for row in rows])

    def test_broken_module(self) -> None:
        """A module failing at import is reported on stderr by name and error; the rest are listed."""
        directory, names = self.plugin_dir(nothing=DROP_IN, broken='raise ImportError("needs libfoo")\n')
        config = self.write(f"[txgate]\nplugin_path = [{directory!r}]\n" + SERVICE)
        status, out, err = self.run_txgate("plugins", "--config", config)
        self.assertEqual(status, 0)
        mine = [row[1] for row in _rows(out) if row[0] == "detector" and row[2].startswith(directory)]
        self.assertEqual(mine, ["nothing"])
        self.assertIn(names["broken"], err)
        self.assertIn("ImportError: needs libfoo", err)
        self.flushLoggedErrors(ImportError)

    def test_bad_config(self) -> None:
        """A bad --config file: exit 1 with its errors, nothing listed."""
        config = self.write('[txgate]\nplugin_path = "plugins"\n' + SERVICE)
        status, out, err = self.run_txgate("plugins", "--config", config)
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{config}: txgate.plugin_path: "), msg=err)

    def test_plugin_path_not_directory(self) -> None:
        """A plugin_path entry that is not a directory: exit 1 naming the key."""
        missing = os.path.abspath(self.mktemp())
        config = self.write(f"[txgate]\nplugin_path = [{missing!r}]\n" + SERVICE)
        status, out, err = self.run_txgate("plugins", "--config", config)
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{config}: txgate.plugin_path[0]: "), msg=err)
