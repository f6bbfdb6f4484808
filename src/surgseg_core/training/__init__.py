"""One training loop for every method (see ``trainer.py``) and the method
registry the CLI and the napari training widget read."""
