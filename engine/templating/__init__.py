"""Message templates: Jinja2 in a budgeted read-only sandbox, the template loader and the locked layout.

Owns turning a template and its data into text. Must not know campaigns, databases or channels' transports.
"""
