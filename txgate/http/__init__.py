"""
Pure HTTP/1.1 helpers for the proxy handlers: request targets, hop-by-hop
headers, error pages (L{proxying}); request and response heads and body
framing, read and written (L{framing}, L{responses}).
"""
