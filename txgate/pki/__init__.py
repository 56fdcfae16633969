# -*- test-case-name: tests.pki -*-
"""
txgate's own PKI: the issuer keyring, emulated leaf certificates, the CRL
and the OCSP responder.

Pure cores: certificates, keys, serials and C{now} in, certificates, CRLs and
DER answers out. Nothing here listens, intercepts or reads the clock; only
L{txgate.pki.keyring} and the revocation list in L{txgate.pki.crl} touch
files.
"""

from __future__ import annotations

from txgate.pki.crl import (
    CRL_CONTENT_TYPE,
    Revocation,
    RevocationList,
    append_revocation,
    build_crl,
    crl_number_for,
    load_revocations,
    needs_renewal,
)
from txgate.pki.keyring import Keyring, generate_keyring, load_keyring, load_or_create, save_keyring
from txgate.pki.mint import LeafCache, LeafTemplate, key_type_of, mint_leaf, random_serial, template_from_upstream
from txgate.pki.ocsp import (
    OCSP_REQUEST_CONTENT_TYPE,
    OCSP_RESPONSE_CONTENT_TYPE,
    answer_ocsp,
    malformed_response,
    ocsp_request_from_get_path,
)

__all__ = [
    "CRL_CONTENT_TYPE",
    "Keyring",
    "LeafCache",
    "LeafTemplate",
    "OCSP_REQUEST_CONTENT_TYPE",
    "OCSP_RESPONSE_CONTENT_TYPE",
    "Revocation",
    "RevocationList",
    "answer_ocsp",
    "append_revocation",
    "build_crl",
    "crl_number_for",
    "generate_keyring",
    "key_type_of",
    "load_keyring",
    "load_or_create",
    "load_revocations",
    "malformed_response",
    "mint_leaf",
    "needs_renewal",
    "ocsp_request_from_get_path",
    "random_serial",
    "save_keyring",
    "template_from_upstream",
]
