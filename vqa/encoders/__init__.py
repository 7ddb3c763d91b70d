"""Image and text encoders that turn pixels and questions into token sequences of the fusion width."""

from vqa.encoders.image import ImageEncoder
from vqa.encoders.text import TextEncoder

__all__ = ["ImageEncoder", "TextEncoder"]
