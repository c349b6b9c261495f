"""The pipeline's stages, one module each, and the pieces they share."""
