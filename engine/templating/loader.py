"""The template loader: files from one folder, never from outside it.

``FolderLoader`` refuses any template whose real path (symlinks of files and
of directories resolved) leaves the templates folder, and any file larger
than ``MAX_TEMPLATE_BYTES``; the file is opened without following a final
symlink, so it cannot be swapped for one between the check and the read.
``escapes_folder`` answers the same question for any path (the service's
template snapshot uses it).
"""
from __future__ import annotations

import os
from pathlib import Path

import jinja2

#: A template file larger than this is refused (message templates are a few kB).
MAX_TEMPLATE_BYTES = 1_000_000


class TemplateOutsideFolder(jinja2.TemplateNotFound):
    """A template name resolves (through symlinks) to a file outside the templates folder."""

    def __init__(self, name: str, real_path: str):
        super().__init__(name, f"template {name!r} resolves to {real_path}, outside the templates folder")
        self.real_path = real_path


class TemplateTooLarge(jinja2.TemplateNotFound):
    def __init__(self, name: str):
        super().__init__(name, f"template {name!r} is larger than {MAX_TEMPLATE_BYTES} bytes")


class FolderLoader(jinja2.BaseLoader):
    """Templates from one folder; a name whose real path leaves it is refused (``TemplateOutsideFolder``)."""

    def __init__(self, folder: Path | str):
        self.folder = os.path.realpath(folder)

    def get_source(self, environment, template: str):
        pieces = jinja2.loaders.split_template_path(template)  # refuses '..' segments
        try:
            real = os.path.realpath(os.path.join(self.folder, *pieces))
        except (ValueError, OSError):  # a NUL byte in the name, a name too long
            raise jinja2.TemplateNotFound(template) from None
        if not _inside(self.folder, real):
            raise TemplateOutsideFolder(template, real)
        if not os.path.isfile(real):
            raise jinja2.TemplateNotFound(template)
        try:
            fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            raise jinja2.TemplateNotFound(template) from None
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_TEMPLATE_BYTES + 1)
            mtime = os.fstat(f.fileno()).st_mtime
        if len(data) > MAX_TEMPLATE_BYTES:
            raise TemplateTooLarge(template)
        source = data.decode("utf-8")

        def uptodate() -> bool:
            try:
                return os.path.getmtime(real) == mtime
            except OSError:
                return False

        return source, real, uptodate


def _inside(folder: str, real: str) -> bool:
    return real == folder or real.startswith(folder.rstrip(os.sep) + os.sep)


def escapes_folder(folder: Path | str, path: Path | str) -> bool:
    """Whether ``path`` (under ``folder``) really lives outside it, symlinks resolved."""
    return not _inside(os.path.realpath(folder), os.path.realpath(path))
