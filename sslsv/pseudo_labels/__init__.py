"""Pseudo-labelling for multi-stage training: extraction, clustering, filtering, the multi-stage driver."""
