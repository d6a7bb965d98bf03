"""HemePLM-Diffuse: a generative surrogate of protein–ligand molecular dynamics."""

__version__ = "0.1.0"
