"""Click commands kept out of cli.py, one module each; cli.py registers them."""
