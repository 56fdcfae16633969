"""
Built-in handoff: the byte tunnel (C{client.protocol=tcp}, C{tunneled=yes}).
"""

from txgate.net.pump import TunnelHandoff

tunnel = TunnelHandoff()
