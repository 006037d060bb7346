"""Runnable jobs (recipes) that the mosaic-alm console script dispatches to."""
