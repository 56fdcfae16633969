"""
Tests for L{txgate.admin}: the pure views and the twisted.web site.
"""
