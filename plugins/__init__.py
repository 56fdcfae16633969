"""
txgate's built-in plugins. These modules are discovered through
L{txgate.dropins} exactly as third-party plugin modules are; do not import
them directly.
"""
