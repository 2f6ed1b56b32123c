"""A prompt is data: its arguments, what fills them in, the tools it needs, and the text it asks of the model.

The text may name tools; the server keeps only its sentences that name offered tools (the rule of the
instructions), and lists a prompt only while one of the tools it `needs` is offered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """Values of an argument read from the portal (through the request's connection: its limits, its auth)."""

    method: str
    params: Mapping[str, object]
    values: Callable[[object], list[str]]
    """The REST result -> the values, in the portal's order."""


@dataclass(frozen=True)
class Argument:
    name: str
    description: str
    required: bool = False
    choices: tuple[str, ...] = ()
    """Fixed values completion offers (periods, groupings)."""
    sources: tuple[Source, ...] = ()
    """Or the portal's values completion offers (lines, users), in this order."""


@dataclass(frozen=True)
class PromptSpec:
    name: str
    title: str
    description: str
    arguments: tuple[Argument, ...]
    needs: tuple[str, ...]
    """Tools that do the job: the prompt is listed while any of them is offered."""
    text: Callable[[Mapping[str, str]], str]
    """The message to the model, from the arguments given (required ones present, blanks left out)."""

    def argument(self, name: str) -> Argument | None:
        return next((argument for argument in self.arguments if argument.name == name), None)

    def missing(self, given: Mapping[str, str]) -> list[str]:
        """Required arguments not given (or blank)."""
        return [arg.name for arg in self.arguments if arg.required and not given.get(arg.name, "").strip()]
