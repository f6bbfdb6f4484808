"""Errors users see. Every input path raises one of these with a message that
names the file (or object) and the problem, never a raw library traceback."""
from __future__ import annotations


class SurgsegError(Exception):
    """Base class: the message is written for the user, not the developer."""


class VideoError(SurgsegError):
    """A video, TIFF stack or frame folder cannot be opened or read."""


class FrameIndexError(VideoError, IndexError):
    """A frame number outside the frames a source has (also an IndexError, as
    numpy code expects); for a truncated file it says where the damage is."""


class DatasetError(SurgsegError):
    """A dataset folder is in the wrong layout, empty or inconsistent."""


class WeightsError(SurgsegError):
    """A checkpoint is missing, corrupt, has the wrong hash or wrong keys."""


class TrainingError(SurgsegError):
    """Training stopped: NaN/inf loss, out of memory, bad configuration."""


class ConfigError(SurgsegError):
    """A configuration file or option is invalid."""


class WriteError(SurgsegError):
    """A result could not be written completely (disk full, encoder failed,
    unwritable folder); the previous file, if any, is kept unchanged."""


class Cancelled(SurgsegError):
    """Work was cancelled by the user; everything written so far is valid."""
