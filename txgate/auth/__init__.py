# -*- test-case-name: tests.auth -*-
"""
Proxy authentication: realms backed by htpasswd-style files, Basic
credentials, and the revocation fetches that are never challenged.

Pure cores: files and request heads in, answers out; the explicit proxy
(L{txgate.net.explicit}) reads the clock and writes the 407.
"""

from __future__ import annotations

from typing import Mapping

from txgate.auth.exempt import is_revocation_fetch
from txgate.auth.htpasswd import Htpasswd, load_htpasswd, parse_htpasswd
from txgate.auth.realm import Authenticated, CredentialCache, Realm, Refused
from txgate.config import Config
from txgate.errors import ConfigError, ConfigErrors

__all__ = [
    "Authenticated",
    "CredentialCache",
    "Htpasswd",
    "Realm",
    "Refused",
    "is_revocation_fetch",
    "load_htpasswd",
    "load_realms",
    "parse_htpasswd",
]


def load_realms(config: Config) -> Mapping[str, Realm]:
    """
    Read the htpasswd file of every C{[realm.NAME]}.

    @return: realm name -> L{Realm}; empty when none is configured.
    @raise ConfigErrors: with every refused line of every file (each naming
        the file and line) and every file that cannot be read (naming
        C{realm.NAME.htpasswd}).
    """
    realms: dict[str, Realm] = {}
    errors: list[ConfigError] = []
    for name, realm in config.realms.items():
        try:
            htpasswd = load_htpasswd(realm.htpasswd)
        except ConfigErrors as e:
            for error in e.errors:
                if error.line is None:
                    # The file as a whole: say which key named it.
                    error = ConfigError(config.path, f"realm.{name}.htpasswd", f"{realm.htpasswd!r}: {error.message}")
                errors.append(error)
            continue
        realms[name] = Realm(name, htpasswd, realm.credentials_ttl)
    if errors:
        raise ConfigErrors(tuple(errors))
    return realms
