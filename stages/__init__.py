"""The pipeline's stages, one module each: ``python -m stages.<name>``."""
