"""
Built-in policy provider: CPL files (C{*.cpl}), the policy language of Blue
Coat ProxySG. docs/policy.md describes it.
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from txgate.interfaces import IPolicy, IPolicyProvider, PolicyEnvironment
from txgate.policy.cpl import load_policy


@implementer(IPlugin, IPolicyProvider)
class CPLProvider:
    name = "cpl"

    def accepts(self, path: str) -> bool:
        return path.lower().endswith(".cpl")

    def load(self, path: str, default_allow: bool, environment: PolicyEnvironment) -> IPolicy:
        return load_policy(path, default_allow, environment)


cpl = CPLProvider()
