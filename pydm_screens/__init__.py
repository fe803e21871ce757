"""PyDM displays and the data plugin for live pipeline results (filled by the PyDM screens issue)."""
