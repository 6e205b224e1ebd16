"""atlib: the helpers behind atbook, the executable re-run of arXiv 2108.12001.

Layers, each importing only those below it:
``__main__``/``book`` → ``profiles``/``experiments``/``report`` → ``train``/``evaluate`` →
``attacks``/``models``/``data``/``store``/``plots`` → ``stats``/``compat``/``runtime``.
"""

__version__ = "0.1.0"
