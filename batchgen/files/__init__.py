"""Files on disk: downloads, the decoder check, sidecars, output-path safety."""
