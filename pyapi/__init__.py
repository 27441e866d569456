"""recorder's Python API (over the same C core; grows with the pyapi issue)."""
