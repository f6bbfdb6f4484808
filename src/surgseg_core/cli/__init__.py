"""The ``surgseg`` command line. Each subcommand lives in its own module with a
``register(subparsers)`` function and calls the same core functions as the
napari widgets."""
