"""Moving from trino-gateway (Java): convert its MVEL routing rules, import its backends.

* ``mvel.py`` parses the MVEL subset trino-gateway rules are written in;
* ``translate.py`` (with ``values.py``, ``formula.py`` and ``java_model.py``) turns an MVEL
  condition into a rule-engine condition with the same truth value;
* ``convert.py`` turns a whole rules file into this gateway's rules, preserving which group wins;
* ``import_backends.py`` copies backends from a running trino-gateway or its database;
* ``cli.py`` adds ``rules convert`` and ``import-backends`` to the ``trino-gateway`` command.

See docs/migrating.md.
"""
