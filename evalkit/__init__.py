"""evalkit: evaluation and monitoring for fine-tuned chat language models."""

from evalkit.errors import EvalkitError

__version__ = "0.1.0"
__all__ = ["EvalkitError", "__version__"]
