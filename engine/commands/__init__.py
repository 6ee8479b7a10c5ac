"""Click commands that live in their own modules; engine/cli.py registers them."""
