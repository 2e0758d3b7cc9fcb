"""Sparse autoencoders: the model (``sae``) and the SAELens on-disk format (``saelens_io``)."""
