"""b2dkit: one command to stand up the same boot2docker development VM on every laptop."""

__version__ = "0.1.0"
