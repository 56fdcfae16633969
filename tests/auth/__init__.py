"""
Tests for L{txgate.auth}.
"""
