"""
Built-in interceptor: SSL interception (C{ssl.forward_proxy(https)} and
C{(yes)}), emulated certificates from txgate's issuer.
"""

from txgate.net.intercept import SSLInterceptor

ssl = SSLInterceptor()
