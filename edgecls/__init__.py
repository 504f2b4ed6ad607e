"""edgecls: a folder of labelled images in, a small evaluated deployable classifier out."""

__version__ = "0.1.0"
