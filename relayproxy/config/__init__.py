"""Configuration: ``config.toml`` read once into frozen dataclasses (``settings``), and the
secrets it names read from the environment or systemd credentials (``credentials``). Errors name
the offending TOML key path (the typed getters in ``_tables``). Imports only the standard library.
"""
