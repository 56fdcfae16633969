# -*- test-case-name: tests.config.test_load -*-
"""
Configuration: TOML files validated into frozen attrs values.

Pure: reads files and returns values or L{txgate.errors.ConfigErrors}; it never
listens, connects or installs a reactor.
"""

from txgate.config._files import read_text
from txgate.config._load import load_config, load_default_config, parse_config
from txgate.config._model import (
    SERVICE_KINDS,
    AdminConfig,
    Config,
    HealthCheckConfig,
    LogsConfig,
    PersistenceConfig,
    RealmConfig,
    RealServerConfig,
    ReverseConfig,
    ServiceConfig,
    SSLConfig,
    TxgateConfig,
    VirtualServiceConfig,
)
from txgate.config._reverse import load_reverse_config, parse_reverse_config

__all__ = [
    "AdminConfig",
    "Config",
    "HealthCheckConfig",
    "LogsConfig",
    "PersistenceConfig",
    "RealServerConfig",
    "ReverseConfig",
    "VirtualServiceConfig",
    "load_reverse_config",
    "parse_reverse_config",
    "RealmConfig",
    "ServiceConfig",
    "SSLConfig",
    "TxgateConfig",
    "SERVICE_KINDS",
    "load_config",
    "load_default_config",
    "parse_config",
    "read_text",
]
