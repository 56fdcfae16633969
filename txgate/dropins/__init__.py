"""
The package txgate discovers plugins in.

Its C{__path__} is set by L{txgate.plugins.discover} to the shipped C{plugins/}
directory plus the configured C{plugin_path} directories, so built-in and
third-party plugin modules are found the same way, by
L{twisted.plugin.getPlugins}.
"""
