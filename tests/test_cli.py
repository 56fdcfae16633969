"""
Tests for L{txgate.cli}: the operator's C{txgate} command.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import sys
import textwrap
import uuid
from io import StringIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.trial.unittest import SynchronousTestCase

import txgate.dropins
from txgate.cli import main
from txgate.pki.crl import REVOKED_FILE, crl_number_for, load_revocations
from txgate.pki.keyring import CERT_FILES, ISSUER_CERT, KEY_FILES, load_keyring
from txgate.pki.serials import SerialIssuer
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


    def test_reverse_file(self) -> None:
        """
        A file with C{[[virtual_service]]} tables is checked as a reverse
        configuration, without creating the persistence key.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        text = f"""
            [txgate]
            state_dir = "{directory}/var"
            [[virtual_service]]
            name = "web"
            listen = "tcp:0:interface=127.0.0.1"
            allowed_hosts = ["lyncweb.example.com"]
            [[virtual_service.real_server]]
            address = "127.0.0.1:4443"
            """
        good = self.write(text, "reverse.toml", directory)
        self.assertEqual(self.run_txgate("check-config", good), (0, f"{good}: ok\n", ""))
        self.assertFalse(os.path.exists(os.path.join(directory, "var")))
        bad = self.write(text.replace('"127.0.0.1:4443"', '"nowhere"'), "bad.toml", directory)
        status, out, err = self.run_txgate("check-config", bad)
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"{bad}: virtual_service[0].real_server[0].address: ", err)


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


class _CATestCase(_CommandTestCase):
    """
    A configuration whose state directory is a fresh temporary directory.
    """

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.ca_dir = os.path.join(self.state_dir, "ca")
        self.config = self.write(f"[txgate]\nstate_dir = {self.state_dir!r}\n" + SERVICE)

    def ca(self, *argv: str) -> tuple[int, str, str]:
        """Run C{txgate ca argv --config CONFIG}."""
        return self.run_txgate("ca", *argv, "--config", self.config)

    def init(self) -> None:
        status, out, err = self.ca("init")
        self.assertEqual((status, err), (0, ""), msg=out)

    def issuer(self) -> x509.Certificate:
        with open(os.path.join(self.ca_dir, ISSUER_CERT), "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def fingerprint(self) -> str:
        return self.issuer().fingerprint(hashes.SHA256()).hex(":").upper()

    def revoked_lines(self) -> list[str]:
        with open(os.path.join(self.ca_dir, REVOKED_FILE), encoding="utf-8") as f:
            return f.read().splitlines()


class CAInitTests(_CATestCase):
    """
    C{txgate ca init [--config PATH]}: a new keyring in C{<state_dir>/ca},
    never over an existing one.
    """

    def test_creates(self) -> None:
        """Exit 0; keys 0600, certificates 0644, directory 0700; the paths and fingerprint printed."""
        status, out, err = self.ca("init")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(stat.S_IMODE(os.stat(self.ca_dir).st_mode), 0o700)
        for name in KEY_FILES:
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.ca_dir, name)).st_mode), 0o600, name)
        for name in CERT_FILES:
            self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.ca_dir, name)).st_mode), 0o644, name)
        self.assertIn(os.path.join(self.ca_dir, "issuer.pem"), out)
        self.assertIn(os.path.join(self.ca_dir, "issuer.key"), out)
        self.assertIn(f"SHA-256 fingerprint: {self.fingerprint()}\n", out)
        load_keyring(self.ca_dir)

    def test_refuses_second_time(self) -> None:
        """A second init: exit 1, one line on stderr, the issuer unchanged."""
        self.init()
        before = self.fingerprint()
        status, out, err = self.ca("init")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(
            err,
            f"{self.ca_dir} already holds a keyring; remove it first to make a new issuer"
            " (clients trust the old one)\n",
        )
        self.assertEqual(self.fingerprint(), before)

    def test_refuses_partial_keyring(self) -> None:
        """One keyring file is enough to refuse: a lost key is not silently replaced."""
        os.makedirs(self.ca_dir)
        self.write("x", "leaf-rsa.key", self.ca_dir)
        status, out, err = self.ca("init")
        self.assertEqual((status, out), (1, ""))
        self.assertIn("already holds a keyring", err)
        self.assertFalse(os.path.exists(os.path.join(self.ca_dir, ISSUER_CERT)))

    def test_configured_issuer(self) -> None:
        """With ssl.issuer_cert set, the state-dir keyring is still made and the output says so."""
        self.init()
        other = os.path.abspath(self.mktemp())
        issuer_cert = os.path.join(self.ca_dir, ISSUER_CERT)
        issuer_key = os.path.join(self.ca_dir, "issuer.key")
        self.config = self.write(
            f"[txgate]\nstate_dir = {other!r}\n{SERVICE}\n[ssl]\n"
            f"issuer_cert = {issuer_cert!r}\nissuer_key = {issuer_key!r}\n"
        )
        status, out, err = self.ca("init")
        self.assertEqual((status, err), (0, ""), msg=out)
        self.assertIn(f"configured issuer {issuer_cert}", out)
        load_keyring(os.path.join(other, "ca"))

    def test_bad_config(self) -> None:
        """A bad configuration: exit 1 with its errors, nothing created."""
        self.config = self.write(f"[txgate]\nstate_dir = {self.state_dir!r}\nbogus = 1\n" + SERVICE)
        status, out, err = self.ca("init")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{self.config}: txgate.bogus"), msg=err)
        self.assertFalse(os.path.exists(self.ca_dir))


class CARevokeTests(_CATestCase):
    """
    C{txgate ca revoke SERIAL [--config PATH]}: one line appended to
    C{revoked.jsonl}.
    """

    def test_openssl_style(self) -> None:
        """C{serial=0A:1B} (any case) is accepted; the line names serial a1b."""
        self.init()
        status, out, err = self.ca("revoke", "Serial=0a:1B")
        self.assertEqual(status, 0, msg=err)
        self.assertEqual(
            out,
            "revoked 0A1B; the CRL and OCSP answers of running txgate processes sharing this"
            " directory change within seconds\n",
        )
        self.assertIn("not a serial this issuer minted", err)
        [line] = self.revoked_lines()
        self.assertEqual(json.loads(line)["serial"], "a1b")
        self.assertEqual(load_revocations(os.path.join(self.ca_dir, REVOKED_FILE)).as_pairs()[0][0], 0xA1B)

    def test_minted_serial(self) -> None:
        """A serial this issuer minted, as plain hex: revoked without a note."""
        self.init()
        serial = SerialIssuer.from_key(load_keyring(self.ca_dir).issuer_key).new()
        status, out, err = self.ca("revoke", format(serial, "X"))
        self.assertEqual((status, err), (0, ""))
        self.assertTrue(out.startswith(f"revoked {serial:X}; "), msg=out)
        self.assertEqual(len(self.revoked_lines()), 1)

    def test_duplicate(self) -> None:
        """A serial already revoked: exit 0, said so, no second line."""
        self.init()
        self.ca("revoke", "serial=0A1B")
        status, out, err = self.ca("revoke", "0a:1b")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("0A1B is already revoked (since ", out)
        self.assertEqual(len(self.revoked_lines()), 1)

    def test_junk(self) -> None:
        """Not hex, zero, empty or longer than 20 bytes: exit 2, one line, nothing written."""
        self.init()
        for junk in ("xyz", "serial=", "0", "00:00", "0xG1", "1" * 41, "12 34"):
            status, out, err = self.ca("revoke", junk)
            self.assertEqual((status, out), (2, ""), msg=junk)
            self.assertEqual(len(err.splitlines()), 1, msg=err)
            self.assertIn("is not a certificate serial", err)
        self.assertFalse(os.path.exists(os.path.join(self.ca_dir, REVOKED_FILE)))

    def test_longest(self) -> None:
        """The largest serial DER fits in 20 bytes is accepted, and the CRL can carry it."""
        self.init()
        status, out, err = self.ca("revoke", "7F" + "FF" * 19)
        self.assertEqual(status, 0, msg=err)
        status, out, err = self.ca("revoke", "80" + "00" * 19)
        self.assertEqual(status, 2, msg=out)
        status, out, err = self.ca("show")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("revoked serials: 1\n", out)

    def test_no_keyring(self) -> None:
        """No keyring yet: exit 1 saying how to make one; nothing written."""
        status, out, err = self.ca("revoke", "0A1B")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"no keyring in {self.ca_dir} yet: run `txgate ca init` or start txgate\n")
        self.assertFalse(os.path.exists(self.ca_dir))

    def test_bad_revocation_file(self) -> None:
        """A broken revoked.jsonl: exit 1 naming it and the line."""
        self.init()
        self.write("not json\n", REVOKED_FILE, self.ca_dir)
        status, out, err = self.ca("revoke", "0A1B")
        self.assertEqual((status, out), (1, ""))
        self.assertTrue(err.startswith(f"{os.path.join(self.ca_dir, REVOKED_FILE)}:1: "), msg=err)


class CAShowTests(_CATestCase):
    """
    C{txgate ca show [--config PATH]}: the issuer, its files, its revocations
    and the current CRL.
    """

    def test_show(self) -> None:
        """The subject, fingerprint, files, revocation count and the CRL's number."""
        self.init()
        self.ca("revoke", "0A1B")
        [revocation] = load_revocations(os.path.join(self.ca_dir, REVOKED_FILE)).entries
        status, out, err = self.ca("show")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("issuer: O=txgate,CN=txgate issuer\n", out)
        self.assertIn(f"SHA-256 fingerprint: {self.fingerprint()}\n", out)
        self.assertIn(f"  {os.path.join(self.ca_dir, 'issuer.key')}\n", out)
        self.assertIn("revoked serials: 1\n", out)
        # thisUpdate is the latest revocation, as it is later than midnight.
        self.assertIn(f"CRL number: {crl_number_for(revocation.time)}\n", out)
        next_update = revocation.time + datetime.timedelta(days=30)
        self.assertIn(f"CRL next update: {next_update:%Y-%m-%d %H:%M:%S} UTC\n", out)

    def test_no_revocations(self) -> None:
        """Nothing revoked: the CRL is numbered by the start of the UTC day."""
        self.init()

        def midnight() -> int:
            now = datetime.datetime.now(datetime.timezone.utc)
            return crl_number_for(now.replace(hour=0, minute=0, second=0, microsecond=0))

        midnights = {midnight()}
        status, out, err = self.ca("show")
        midnights.add(midnight())
        self.assertEqual((status, err), (0, ""))
        self.assertIn("revoked serials: 0\n", out)
        numbers = [line.split(": ")[1] for line in out.splitlines() if line.startswith("CRL number: ")]
        self.assertIn(int(numbers[0]), midnights)

    def test_no_keyring(self) -> None:
        """No keyring: exit 1 saying how to make one, and none is made."""
        status, out, err = self.ca("show")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"no keyring in {self.ca_dir} yet: run `txgate ca init` or start txgate\n")
        self.assertFalse(os.path.exists(self.ca_dir))

    def test_readable_key(self) -> None:
        """A world-readable issuer.key: exit 1 naming the file, no traceback."""
        self.init()
        key = os.path.join(self.ca_dir, "issuer.key")
        os.chmod(key, 0o644)
        status, out, err = self.ca("show")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"{key}: private key is readable by others (mode 0644); chmod 600 it\n")

    def test_default_config(self) -> None:
        """Without --config the embedded defaults' state_dir (relative "var") is used."""
        cwd = os.getcwd()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        os.chdir(directory)
        self.addCleanup(os.chdir, cwd)
        status, out, err = self.run_txgate("ca", "show")
        self.assertEqual((status, out), (1, ""))
        self.assertEqual(err, f"no keyring in {os.path.join('var', 'ca')} yet: run `txgate ca init` or start txgate\n")
