"""Click commands kept out of cli.py, one module each; cli.py registers them.

What they share (error handler, options, opening a reconciler) is in
engine.commands.common, which cli.py imports as well: a command module imports
neither engine.cli nor another command's module (except plan_diff_format, the
output of plan_diff), so ``import engine.commands.explain`` works on its own.
"""
