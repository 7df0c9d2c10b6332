"""Evaluation tier: measuring checkpoints on images (``measure``), RD result files (``results``), BD-rate
(``bd``), RD plots (``plots``) and the classical codecs they are compared with (``anchors``).

Above the coding tier (``measure`` codes real files through ``utils.coding``) and beside ``training``,
which it never imports. Import the module you need; the package itself imports nothing, so that
``eval.py`` does not pay for matplotlib.
"""
