"""
Tests that the wheel works installed: built from this checkout, installed
with its dependencies into a fresh virtualenv, and run from outside the
checkout, so nothing is found through the source tree by accident.

Slow (tens of seconds: a wheel build and a dependency install); it needs
pip to reach an index or wheelhouse with txgate's dependencies.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NOT_SOURCE = shutil.ignore_patterns(
    ".git", "_trial_temp*", "build", "dist", "*.egg-info", "var", ".venv", "__pycache__",
    "dropin.cache", ".hypothesis",
)


def _run(argv: list[str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """
    Run C{argv} in C{cwd} without this interpreter's environment leaking in
    (no PYTHONPATH, no active virtualenv).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class _Installed:
    """
    The wheel built from a copy of the checkout (so the build leaves no
    build/ behind in it) and a fresh virtualenv it is installed in, all in a
    temporary directory outside the checkout that is removed at exit.
    Trial has no setUpClass, so the tests share one instance via L{_installed}.
    """

    def __init__(self) -> None:
        self.work = tempfile.mkdtemp(prefix="txgate-packaging-")
        atexit.register(shutil.rmtree, self.work, True)
        source = os.path.join(self.work, "source")
        shutil.copytree(REPO, source, ignore=_NOT_SOURCE)
        dist = os.path.join(self.work, "dist")
        _check(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source], self.work))
        [wheel] = os.listdir(dist)
        self.wheel = os.path.join(dist, wheel)
        venv = os.path.join(self.work, "venv")
        _check(_run([sys.executable, "-m", "venv", venv], self.work))
        self.bin = os.path.join(venv, "bin")
        _check(_run([os.path.join(self.bin, "python"), "-m", "pip", "install", self.wheel], self.work))
        # Somewhere that is neither the checkout nor the copy it was built from.
        self.elsewhere = os.path.join(self.work, "elsewhere")
        os.mkdir(self.elsewhere)


def _check(result: subprocess.CompletedProcess[str]) -> None:
    if result.returncode != 0:
        raise RuntimeError(f"{result.args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")


_cache: list[_Installed | BaseException] = []


def _installed() -> _Installed:
    """Build and install once per test run; a failure is reported by every test."""
    if not _cache:
        try:
            _cache.append(_Installed())
        except Exception as e:
            _cache.append(e)
    if isinstance(_cache[0], BaseException):
        raise _cache[0]
    return _cache[0]


class InstalledWheelTests(SynchronousTestCase):
    """
    The wheel carries the twistd plugin and the built-in plugins, and its
    commands work in a fresh virtualenv.
    """

    # Not enforced for synchronous tests; says how long a build may take.
    timeout = 600

    def setUp(self) -> None:
        installed = _installed()
        self.wheel, self.bin, self.elsewhere = installed.wheel, installed.bin, installed.elsewhere

    def run_installed(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run one of the virtualenv's commands from outside the checkout."""
        return _run([os.path.join(self.bin, command), *args], self.elsewhere, timeout=120)

    def test_wheel_contents(self) -> None:
        """
        The wheel ships the twistd plugin without claiming twisted/ or
        twisted/plugins/ as packages, plus the built-in plugins and defaults.
        """
        with zipfile.ZipFile(self.wheel) as wheel:
            names = set(wheel.namelist())
        for shipped in (
            "twisted/plugins/txgate_plugin.py",
            "txgate_plugins/txgate_tunnel.py",
            "txgate/defaults/forward.toml",
        ):
            self.assertIn(shipped, names)
        for absent in ("twisted/__init__.py", "twisted/plugins/__init__.py"):
            self.assertNotIn(absent, names)
        self.assertEqual([n for n in names if n.endswith("dropin.cache")], [])

    def test_twistd_help(self) -> None:
        """twistd finds the txgate plugin: C{twistd txgate forward --help} works."""
        result = self.run_installed("twistd", "txgate", "forward", "--help")
        self.assertEqual(result.returncode, 0, msg=result.stdout + result.stderr)
        self.assertIn("--config", result.stdout)

    def test_plugins_from_site_packages(self) -> None:
        """C{txgate plugins} lists the tunnel handoff from the installed copy, not the checkout."""
        result = self.run_installed("txgate", "plugins")
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        [origin] = [
            line.split(None, 2)[2] for line in result.stdout.splitlines() if line.split()[:2] == ["handoff", "tunnel"]
        ]
        purelib = _run(
            [os.path.join(self.bin, "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            self.elsewhere,
        ).stdout.strip()
        self.assertTrue(origin.startswith(purelib + os.sep), msg=f"{origin} not in {purelib}")
        self.assertTrue(os.path.isfile(origin))
        self.assertFalse(origin.startswith(REPO + os.sep), msg=origin)

    def test_check_config(self) -> None:
        """The installed C{txgate check-config} accepts the shipped etc/forward.toml."""
        path = os.path.join(REPO, "etc", "forward.toml")
        result = self.run_installed("txgate", "check-config", path)
        self.assertEqual((result.returncode, result.stdout), (0, f"{path}: ok\n"), msg=result.stderr)


class PackageListTests(SynchronousTestCase):
    """
    pyproject.toml lists packages by hand (twisted/plugins must be named
    explicitly), so a new package directory must be added there too.
    """

    def test_every_package_listed(self) -> None:
        """Every directory under txgate/ with an __init__.py is in [tool.setuptools] packages."""
        import tomllib

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
        found = {
            os.path.relpath(directory, root).replace(os.sep, ".")
            for directory, _, files in os.walk(os.path.join(root, "txgate"))
            if "__init__.py" in files
        }
        self.assertEqual(found - listed, set())
