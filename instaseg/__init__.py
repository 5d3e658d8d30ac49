"""instaseg: instance segmentation — every object's class, score, box and pixel mask."""

__version__ = "0.1.0"
