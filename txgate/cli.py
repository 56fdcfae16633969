# -*- test-case-name: tests.test_cli -*-
"""
The C{txgate} command: offline tools for operators.

  - C{txgate check-config PATH}: validate a configuration file (forward or
    reverse: a file with C{[[virtual_service]]} tables is a reverse one).
  - C{txgate plugins [--config PATH]}: list the registered plugins.
  - C{txgate o365 import FILE.json [--service-area Skype] [--output PATH]}:
    convert Microsoft's endpoints JSON into a category list.
  - C{txgate ca init|revoke SERIAL|show [--config PATH]}: the issuer keyring
    in C{<state_dir>/ca} and its revocation list.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from typing import Any, Sequence, TextIO

from txgate.config import load_config, load_default_config
from txgate.errors import ConfigError, ConfigErrors

__all__ = ["main"]


def _is_reverse(path: str) -> bool:
    """Whether C{path} is a reverse-mode file (it has C{[[virtual_service]]} tables)."""
    import tomllib

    from txgate.config import read_text

    try:
        return "virtual_service" in tomllib.loads(read_text(path))
    except (ConfigError, ConfigErrors, tomllib.TOMLDecodeError):
        return False  # the forward loader reports the problem


def _check_config(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.config import load_reverse_config
    from txgate.net.reverseservice import prepare_reverse
    from txgate.tap import prepare

    status = 0
    for path in args.paths:
        try:
            if _is_reverse(path):
                prepare_reverse(load_reverse_config(path), create_key=False)
            else:
                prepare(load_config(path), create_keyring=False)
        except ConfigErrors as e:
            err.write(f"{e}\n")
            status = 1
        else:
            out.write(f"{path}: ok\n")
    return status


def _plugins(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.plugins import discover

    try:
        config = load_config(args.config) if args.config else load_default_config()
        registry = discover(config.txgate.plugin_path, config.path)
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return 1
    rows = [(p.kind, p.name, p.origin) for p in registry.plugins]
    width_kind = max([len("KIND")] + [len(r[0]) for r in rows])
    width_name = max([len("NAME")] + [len(r[1]) for r in rows])
    out.write(f"{'KIND':<{width_kind}}  {'NAME':<{width_name}}  ORIGIN\n")
    for kind, name, origin in sorted(rows):
        out.write(f"{kind:<{width_kind}}  {name:<{width_name}}  {origin}\n")
    for failure in registry.failures:
        err.write(f"plugin {failure.module} ({failure.origin}) failed to load: {failure.error}\n")
    return 0


def _o365_import(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    import datetime
    import json
    import os

    from txgate.policy.o365 import EndpointsFormatError, convert, render

    categories = args.category or ["Optimize", "Allow"]
    try:
        with open(args.file, "rb") as f:
            raw = f.read()
    except OSError as e:
        err.write(f"{args.file}: cannot read: {e.strerror}\n")
        return 1
    expected = "expected Microsoft's endpoints JSON (https://endpoints.office.com/endpoints/worldwide)"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        err.write(f"{args.file}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}; {expected}\n")
        return 1
    except (ValueError, RecursionError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        err.write(f"{args.file}: not valid JSON: {reason}; {expected}\n")
        return 1
    try:
        conversion = convert(data, args.service_area, categories)
    except EndpointsFormatError as e:
        err.write(f"{args.file}: {e}\n")
        return 1
    text = render(
        conversion,
        source=os.path.basename(args.file),
        today=datetime.date.today(),
        service_area=args.service_area,
        categories=categories,
    )
    for skip in conversion.skipped:
        err.write(f"{args.file}: left out {skip.url!r} (id {skip.endpoint_id}): {skip.reason}\n")
    if args.output is None:
        out.write(text)
        return 0
    temporary = f"{args.output}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, args.output)  # a running proxy never reads half a file
    except OSError as e:
        err.write(f"{args.output}: cannot write: {e.strerror}\n")
        if os.path.exists(temporary):
            os.unlink(temporary)
        return 1
    out.write(
        f"{args.output}: {len(conversion.hosts)} host, {len(conversion.ipv4)} IPv4 and"
        f" {len(conversion.ipv6)} IPv6 entries\n"
    )
    return 0


def _load(args: argparse.Namespace, err: TextIO) -> Any:
    """The configuration C{--config} names (or the embedded defaults); C{None} after reporting errors."""
    try:
        return load_config(args.config) if args.config else load_default_config()
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _no_keyring(ca_dir: str, err: TextIO) -> int:
    err.write(f"no keyring in {ca_dir} yet: run `txgate ca init` or start txgate\n")
    return 1


def _ca_init(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.pki.authority import ca_directory
    from txgate.pki.keyring import (
        ISSUER_CERT,
        ISSUER_KEY,
        fingerprint,
        generate_keyring,
        has_keyring,
        private_directory,
        save_keyring,
    )

    config = _load(args, err)
    if config is None:
        return 1
    ca_dir = ca_directory(config)
    if has_keyring(ca_dir):
        err.write(
            f"{ca_dir} already holds a keyring; remove it first to make a new issuer"
            " (clients trust the old one)\n"
        )
        return 1
    try:
        private_directory(config.txgate.state_dir)  # as at start
        keyring = generate_keyring(_now())
        save_keyring(keyring, ca_dir)
    except OSError as e:
        where = e.filename or ca_dir
        err.write(f"{where}: cannot create the keyring: {e.strerror}\n")
        return 1
    out.write(f"issuer certificate (import this into clients): {os.path.join(ca_dir, ISSUER_CERT)}\n")
    out.write(f"issuer private key: {os.path.join(ca_dir, ISSUER_KEY)}\n")
    out.write(f"SHA-256 fingerprint: {fingerprint(keyring.issuer_cert)}\n")
    if config.ssl.issuer_cert:
        out.write(
            f"note: ssl.issuer_cert is set, so txgate signs with the configured issuer"
            f" {config.ssl.issuer_cert}; of this keyring it uses only the untrusted issuer"
            f" and the leaf keys\n"
        )
    return 0


_SERIAL = re.compile(r"[0-9a-f]+")
_MAX_SERIAL_BITS = 159
"""RFC 5280: at most 20 octets as DER encodes the (positive) integer."""


def _parse_serial(text: str) -> int:
    """
    A certificate serial as C{openssl x509 -serial} prints it: hex, with or
    without C{serial=}, any case, colons allowed.

    @raise ValueError: saying what was wrong.
    """
    digits = text.strip()
    if digits.lower().startswith("serial="):
        digits = digits[len("serial="):]
    digits = digits.replace(":", "").lower()
    if digits.startswith("0x"):
        digits = digits[2:]
    if not _SERIAL.fullmatch(digits):
        raise ValueError("expected hexadecimal digits, as `openssl x509 -noout -serial` prints them")
    serial = int(digits, 16)
    if serial <= 0:
        raise ValueError("a serial must be positive")
    if serial.bit_length() > _MAX_SERIAL_BITS:
        raise ValueError("longer than a certificate serial can be (20 bytes)")
    return serial


def _hex_serial(serial: int) -> str:
    digits = format(serial, "X")
    return digits if len(digits) % 2 == 0 else "0" + digits


def _ca_revoke(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.pki.authority import ca_directory, keyring_for
    from txgate.pki.crl import REVOKED_FILE, append_revocation, load_revocations
    from txgate.pki.keyring import has_keyring
    from txgate.pki.serials import SerialIssuer

    try:
        serial = _parse_serial(args.serial)
    except ValueError as e:
        err.write(f"txgate ca revoke: {args.serial!r} is not a certificate serial: {e}\n")
        return 2
    config = _load(args, err)
    if config is None:
        return 1
    ca_dir = ca_directory(config)
    if not has_keyring(ca_dir):
        return _no_keyring(ca_dir, err)
    path = os.path.join(ca_dir, REVOKED_FILE)
    shown = _hex_serial(serial)
    try:
        revocations = load_revocations(path)
    except ConfigErrors as e:
        err.write(f"{e}\n")
        return 1
    for revocation in revocations.entries:
        if revocation.serial == serial:
            when = revocation.time.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.write(f"{shown} is already revoked (since {when}); nothing changed\n")
            return 0
    try:
        append_revocation(path, serial, _now())
    except OSError as e:
        err.write(f"{path}: cannot write: {e.strerror}\n")
        return 1
    out.write(
        f"revoked {shown}; the CRL and OCSP answers of running txgate processes"
        f" sharing this directory change within seconds\n"
    )
    try:
        issuer_key = keyring_for(config, _now()).issuer_key
    except (ConfigErrors, ConfigError):
        pass  # `txgate ca show` says what is wrong with the keyring
    else:
        if not SerialIssuer.from_key(issuer_key).issued(serial):
            err.write(
                f"note: {shown} is not a serial this issuer minted (an upstream server's"
                f" certificate?); revoking it changes nothing for clients\n"
            )
    return 0


def _ca_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from txgate.pki.authority import Authority, ca_directory, keyring_for
    from txgate.pki.crl import REVOKED_FILE
    from txgate.pki.keyring import ALL_FILES, fingerprint, has_keyring

    config = _load(args, err)
    if config is None:
        return 1
    ca_dir = ca_directory(config)
    if not has_keyring(ca_dir):
        return _no_keyring(ca_dir, err)
    now = _now()
    try:
        keyring = keyring_for(config, now)
        authority = Authority(keyring, config.ssl, ca_dir, lambda: now)
        number = authority.crl_number()
        next_update = authority.crl().next_update_utc
    except (ConfigErrors, ConfigError) as e:
        err.write(f"{e}\n")
        return 1
    cert = keyring.issuer_cert
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    out.write(f"issuer: {cert.subject.rfc4514_string()}\n")
    if config.ssl.issuer_cert:
        out.write(f"issuer certificate: {config.ssl.issuer_cert} (ssl.issuer_cert)\n")
    out.write(f"SHA-256 fingerprint: {fingerprint(cert)}\n")
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    out.write(f"valid: {not_before.strftime(stamp)} to {not_after.strftime(stamp)}\n")
    out.write(f"untrusted issuer: {keyring.untrusted_cert.subject.rfc4514_string()}\n")
    out.write(f"directory: {ca_dir}\n")
    for name in ALL_FILES + (REVOKED_FILE,):
        out.write(f"  {os.path.join(ca_dir, name)}\n")
    out.write(f"revoked serials: {len(authority.revocations)}\n")
    out.write(f"CRL number: {number}\n")
    out.write(f"CRL next update: {next_update.strftime(stamp) if next_update else '-'}\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="txgate", description="txgate operator tools")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-config", help="validate configuration files; exit 1 on errors")
    check.add_argument("paths", nargs="+", metavar="PATH")
    check.set_defaults(run=_check_config)
    plugins = commands.add_parser("plugins", help="list registered plugins by kind, name and origin")
    plugins.add_argument("--config", metavar="PATH", help="use this configuration's plugin_path")
    plugins.set_defaults(run=_plugins)
    o365 = commands.add_parser("o365", help="Microsoft 365 endpoint lists")
    o365_commands = o365.add_subparsers(dest="o365_command", required=True)
    o365_import = o365_commands.add_parser(
        "import",
        help="convert Microsoft's endpoints JSON into a category list (docs/categories.md)",
    )
    o365_import.add_argument("file", metavar="FILE.json", help="from https://endpoints.office.com/endpoints/worldwide")
    o365_import.add_argument(
        "--service-area", default="Skype", help="serviceArea to take (default: Skype, i.e. Skype for Business Online / Teams)"
    )
    o365_import.add_argument(
        "--category",
        action="append",
        metavar="NAME",
        help="endpoint category to take; repeat for several (default: Optimize and Allow)",
    )
    o365_import.add_argument("--output", metavar="PATH", help="write the list here (default: standard output)")
    o365_import.set_defaults(run=_o365_import)
    ca = commands.add_parser("ca", help="the issuer keyring and its revocation list")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    config_help = "the configuration whose state_dir holds the keyring (default: the embedded defaults)"
    ca_init = ca_commands.add_parser("init", help="create the issuer keyring in <state_dir>/ca")
    ca_init.add_argument("--config", metavar="PATH", help=config_help)
    ca_init.set_defaults(run=_ca_init)
    ca_revoke = ca_commands.add_parser("revoke", help="revoke a certificate txgate minted, by serial")
    ca_revoke.add_argument("serial", metavar="SERIAL", help="hex, as `openssl x509 -noout -serial` prints it")
    ca_revoke.add_argument("--config", metavar="PATH", help=config_help)
    ca_revoke.set_defaults(run=_ca_revoke)
    ca_show = ca_commands.add_parser("show", help="the issuer, its files, revocations and current CRL")
    ca_show.add_argument("--config", metavar="PATH", help=config_help)
    ca_show.set_defaults(run=_ca_show)
    from txgate.policy.tool import add_commands as add_policy_commands

    add_policy_commands(commands)
    args = parser.parse_args(argv)
    return int(args.run(args, out, err))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
