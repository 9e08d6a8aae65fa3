"""What the lr-study commands share: exit codes and argument types that fail in one line."""

from __future__ import annotations

import argparse

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "Parser", "int_at_least", "int_or_auto",
           "positive_float"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def int_at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, but got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, but got {text!r}")
        return value

    return parse


def int_or_auto(low: int):
    """``auto``, or an integer >= ``low``."""
    parse_int = int_at_least(low)

    def parse(text: str) -> int | str:
        if text == "auto":
            return text
        try:
            return parse_int(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= {low}, but got {text!r}") from None

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, but got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, but got {text!r}")
    return value
