"""
Tests for L{txgate} as a package: its version and its public surface.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib

from twisted.trial.unittest import SynchronousTestCase

import txgate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBLIC_MODULES = ("txgate.interfaces", "txgate.session", "txgate.errors", "txgate.testing")

CORE_MODULES = (
    "txgate.interfaces",
    "txgate.session",
    "txgate.errors",
    "txgate.config",
    "txgate.detection",
    "txgate.http.proxying",
    "txgate.acl",
    "txgate.accesslog",
    "txgate.policy.default",
)


class VersionTests(SynchronousTestCase):
    """
    The version the code reports is the one the package is built with.
    """

    def test_version_matches_pyproject(self) -> None:
        """C{txgate.__version__} is C{project.version} in pyproject.toml."""
        with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
            project = tomllib.load(f)["project"]
        self.assertEqual(txgate.__version__, project["version"])


class PublicSurfaceTests(SynchronousTestCase):
    """
    Every name a public module exports exists, so C{from txgate.X import *}
    and plugin authors' imports cannot break on a stale C{__all__}.
    """

    def test_all_names_exist(self) -> None:
        """Each name in C{__all__} of the public modules is an attribute of its module."""
        for name in PUBLIC_MODULES:
            module = importlib.import_module(name)
            self.assertTrue(module.__all__, msg=f"{name} has an empty __all__")
            missing = [n for n in module.__all__ if not hasattr(module, n)]
            self.assertEqual(missing, [], msg=f"{name}.__all__ names missing objects")


class NoReactorTests(SynchronousTestCase):
    """
    Importing a core does not install the global reactor, so a tool or test
    can still choose one after importing txgate.
    """

    def test_cores_do_not_install_reactor(self) -> None:
        """A fresh interpreter importing every core has no C{twisted.internet.reactor}."""
        script = (
            "import importlib, sys\n"
            f"for name in {CORE_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            "    if 'twisted.internet.reactor' in sys.modules:\n"
            "        print(name)\n"
            "        break\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(result.stdout, "", msg="this import installed the reactor")
