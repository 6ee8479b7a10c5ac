"""Click commands kept out of cli.py, one module each; cli.py registers them.

Importing engine.cli here first lets a command module be imported on its own
(``import engine.commands.explain``): cli.py defines the shared helpers before
it imports the command modules at its end.
"""
from .. import cli  # noqa: F401
