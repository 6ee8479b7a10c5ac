"""Click commands kept out of engine/cli.py, each module one command, registered at the end of cli.py."""
