"""Manifests: read, shape-check, resolve, expand, images, names, schema generation."""
