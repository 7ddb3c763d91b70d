"""Validation of the constructor options shared by the attention backends."""

from __future__ import annotations


def check_positive_int(name: str, value: object) -> None:
    """Raise ValueError unless `value` is an int >= 1 (bool is rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_head_split(dim: int, num_heads: int) -> None:
    """Raise ValueError unless `dim` and `num_heads` are positive ints and `num_heads` divides `dim`."""
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    if dim % num_heads:
        raise ValueError(
            f"dim={dim} is not divisible by num_heads={num_heads}; choose a dim that is a multiple "
            f"of num_heads"
        )


def check_dropout(dropout: object) -> None:
    """Raise ValueError unless `dropout` is a probability in [0, 1)."""
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")
