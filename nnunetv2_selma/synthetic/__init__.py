"""Synthetic SELMA3D-like light-sheet data with exact masks, in the real on-disk layouts.

``volumes`` draws patches and volumes, ``download`` writes them in the challenge, BioImage Archive
and 2025-style layouts, ``pictures`` saves MIP previews.
"""
