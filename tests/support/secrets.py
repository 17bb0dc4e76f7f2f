"""Secrets the tests plant in URLs and options, so that finding one anywhere means a leak."""

from __future__ import annotations

PASSWORD = "Pa55w0rdXYZ"


TOKEN = "T0kenQRS"
