"""Tiny offline builders, one module per family (each exposes ``build(out_dir, seed, preset) -> Path``).

They are imported on demand: a builder pulls in its family's transformers classes, which the other
families do not need. Shared pieces (the locally trained tokenizer, its corpus) live in ``models/tiny.py``.
"""
