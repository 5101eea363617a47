"""brain: the back end of a personal AI brain."""

__version__ = "0.1.0"
