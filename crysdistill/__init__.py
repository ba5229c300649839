"""crysdistill: distil a self-supervised crystal graph teacher into crystal property predictors."""

__version__ = "0.1.0"

__all__ = ["__version__"]
