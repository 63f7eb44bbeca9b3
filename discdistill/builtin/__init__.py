"""Domains shipped with the core (synthetic, for testing the method). Registered through BUILTIN_PLUGINS."""
