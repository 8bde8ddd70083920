"""Shared matplotlib helpers: plots are files, never windows.

Figures are :class:`matplotlib.figure.Figure` objects made without pyplot, so drawing works under
whatever backend is active (the library never picks one: the tests and the experiment scripts set
``MPLBACKEND=Agg``), never opens a window and leaves pyplot's list of open figures alone.
"""

from __future__ import annotations

import os

from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, layout=None, **kw):
    """``(figure, axes)`` as :func:`matplotlib.pyplot.subplots` returns them (``kw``: ``sharex``,
    ``squeeze``, ``gridspec_kw``, ...), on a figure that pyplot does not manage."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, **kw)


def save_figure(fig, path) -> str:
    """Write ``fig`` to ``path`` (creating its directory) at 130 dpi; returns the path."""
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    return path
