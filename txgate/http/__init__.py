"""
Pure HTTP/1.1 helpers for the proxy handlers: request targets, hop-by-hop
headers, error pages. Framing and parsing are h11's.
"""
