"""Coding tier: the ``.icwem`` file format (``bitstream``) and image <-> bitstream with a model (``codec``).

Above the floor (``utils.errors``, ``image_io``, ``padding``, ``metrics``); takes the model as an
argument rather than importing ``models``. Tiled and portable coding live model-side
(``models/tiling.py``, ``models/entropy/``) because they are the model's own arithmetic; this tier
frames, checks and times what the model writes, and is the only place that knows the file format's
versions (``codec.decoder_options``: what each version means to ``decompress``). Its one import from
``models`` is encode-time refinement (``models/refine.py``), which ``encode_image`` runs when asked.
"""
