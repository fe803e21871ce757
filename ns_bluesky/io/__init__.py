"""File formats: CXI read/write, images."""
