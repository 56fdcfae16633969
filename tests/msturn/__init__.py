"""Tests for txgate.msturn."""
