"""atlib: the helpers behind atbook, the executable re-run of arXiv 2108.12001.

Layers, each importing only those below it:
``__main__``/``book``/``pages``/``sphinx_ext`` → ``profiles``/``experiments``/``report``/``claims`` →
``train``/``evaluate`` →
``attacks``/``models``/``data``/``store``/``plots`` → ``stats``/``compat``/``runtime``.
"""

__version__ = "0.1.0"
