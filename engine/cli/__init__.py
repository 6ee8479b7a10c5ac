"""The ``engine`` command: click commands, a few lines each over the Python API.

Owns argument parsing, exit codes and the one error handler. The only package that imports click.
"""
