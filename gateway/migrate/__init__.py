"""Moving from trino-gateway (Java): convert its MVEL routing rules, import its backends.

``mvel.py`` parses the MVEL subset trino-gateway rules use, ``translate.py`` turns MVEL
conditions into rule-engine conditions with the same truth value, ``convert.py`` turns a whole
rules file into this gateway's rules (preserving which group wins), ``import_backends.py`` copies
backends from a running trino-gateway or its database, and ``cli.py`` wires both into the
``trino-gateway`` command. See docs/migrating.md.
"""
