"""Exact diffusion priors: Gaussian mixtures whose noise prediction is closed form (design.md §3).

mixture.py is the math; shapes.py (with world.py, the rendered world, and vocabulary.py, its words) and points2d.py are
the two worlds built on it. Metrics against them are exact too (scoredist.eval).
"""
