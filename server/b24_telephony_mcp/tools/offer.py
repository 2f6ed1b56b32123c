"""What a running server offers: `ToolOffer`, the one record of the offered tools.

`tools/list` lists it, `tools/call` looks tools up in it, the instructions and error hints are written for it (a
text never names a tool that is not offered). It is process-wide: the 2026-07-28 protocol has no session to keep a
per-client set in, so a toolset enabled by one request is offered to every later request, over either protocol
generation. Tools see it through `base.OfferedTools`, the interface declared below them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator

from b24_telephony_mcp.tools.base import OfferedTools, Toolset, ToolSpec
from b24_telephony_mcp.tools.batch import RUN_BATCH, RUN_BATCH_READ_ONLY
from b24_telephony_mcp.tools.catalogue import (
    TOOL_NAMES,
    TOOLSET_OF_TOOL,
    TOOLSET_TOOL_NAMES,
    every_toolset,
    load_toolset,
    resolve_toolsets,
    select_tools,
    tool_spec,
)
from b24_telephony_mcp.tools.dynamic import DYNAMIC_TOOLS


class ToolOffer(OfferedTools):
    """The tools offered, by name, in declaration order (the dynamic tools last)."""

    def __init__(
        self,
        specs: Iterable[ToolSpec],
        *,
        read_only: bool = False,
        dynamic: bool = False,
        enabled: Collection[str] | None = None,
        allowlist: bool = False,
    ) -> None:
        specs = tuple(specs)
        chosen = {spec.name for spec in specs}
        self.read_only = read_only
        self.dynamic = dynamic
        self.allowlist = allowlist
        """`--tools` chose the tools, not the toolsets."""
        self.enabled: set[str] = (
            set(enabled)
            if enabled is not None
            else {name for name, tools in TOOLSET_TOOL_NAMES.items() if tools and set(tools) <= chosen}
        )
        """Toolsets switched on (by the selection or enable_toolset); `--tools` may offer parts of others."""
        self.version = 0
        """Grows whenever the offered tools change."""
        self._specs = self._ordered(specs)

    @classmethod
    def select(
        cls,
        toolsets: Collection[str] | None = None,
        *,
        read_only: bool = False,
        tools: Collection[str] | None = None,
        dynamic: bool = False,
    ) -> ToolOffer:
        """The offer for a selection (`--toolsets`, `--read-only`, `--tools`, `--dynamic-toolsets`); raises
        `UnknownNameError` for a name that does not exist."""
        specs = select_tools(toolsets, read_only=read_only, tools=tools)
        enabled = None if tools is not None else {toolset.name for toolset in resolve_toolsets(toolsets)}
        return cls(specs, read_only=read_only, dynamic=dynamic, enabled=enabled, allowlist=tools is not None)

    def _ordered(self, specs: Iterable[ToolSpec]) -> dict[str, ToolSpec]:
        """`specs` as given (run_batch in the form the selection chose), in declaration order."""
        by_name = {spec.name: spec for spec in specs if spec.name in _POSITION}
        ordered = {name: by_name[name] for name in sorted(by_name, key=_POSITION.__getitem__)}
        if self.dynamic:
            ordered |= {spec.name: spec for spec in DYNAMIC_TOOLS}
        return ordered

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def possible(self) -> tuple[ToolSpec, ...]:
        """Every tool this server may come to offer: those offered now, and with dynamic toolsets the rest of every
        toolset (read-only mode applied), which imports every toolset's module."""
        if not self.dynamic:
            return tuple(self.values())
        batch = (self._specs[RUN_BATCH.name],) if RUN_BATCH.name in self._specs else ()
        return (*(spec for each in every_toolset() for spec in self.offerable(each)), *batch, *DYNAMIC_TOOLS)

    def may_offer(self, toolset: str) -> bool:
        """Whether a tool of `toolset` is offered or may come to be (enable_toolset); imports no toolset's module."""
        return self.dynamic or any(name in self._specs for name in TOOLSET_TOOL_NAMES[toolset])

    def servable_toolsets(self) -> tuple[str, ...]:
        """The toolsets a connection may ask for (X-MCP-Toolsets): those switched on, or with dynamic toolsets all."""
        return tuple(name for name in TOOLSET_TOOL_NAMES if self.dynamic or name in self.enabled)

    def narrowed(self, toolsets: Collection[str] | None, read_only: bool) -> ToolOffer:
        """What one connection is offered within this offer: only `toolsets` (None: those switched on), and with
        `read_only` only the tools that change nothing (run_batch in its read-only form). A fixed set: the
        connection chose its toolsets, so no enable_toolset; built again whenever this offer changes."""
        read_only = read_only or self.read_only
        chosen = set(self.enabled if toolsets is None else toolsets)
        specs = [
            spec
            for spec in (
                *self.values(),
                *(
                    spec
                    for name in chosen - self.enabled
                    if self.dynamic
                    for spec in self.offerable(load_toolset(name))
                ),
            )
            if TOOLSET_OF_TOOL.get(spec.name) in chosen and (spec.effect.read_only or not read_only)
        ]
        if RUN_BATCH.name in self._specs:
            specs.append(RUN_BATCH_READ_ONLY if read_only else self._specs[RUN_BATCH.name])
        return ToolOffer(specs, read_only=read_only, enabled=chosen, allowlist=self.allowlist)

    def offerable(self, toolset: Toolset) -> tuple[ToolSpec, ...]:
        """The tools of `toolset` this server may offer (read-only mode applied)."""
        return tuple(spec for spec in toolset.tools if spec.effect.read_only or not self.read_only)

    def enable(self, name: str) -> tuple[ToolSpec, ...]:
        """Switch a toolset on (importing its module); returns the tools that were not offered before."""
        added = tuple(spec for spec in self.offerable(load_toolset(name)) if spec.name not in self._specs)
        self.enabled.add(name)
        if added:
            self._specs = self._ordered((*self._specs.values(), *added))
            self.version += 1
        return added

    def only_offered(self, text: str, *, explain: bool = True) -> str:
        """`text` without its sentences that name a tool this server does not offer; with `explain`, one sentence
        in their place says where that tool is (never its name)."""
        if all(name in self._specs for name in _TOOL_NAME.findall(text)):
            return text
        kept: list[str] = []
        missing: list[str] = []
        for sentence in _SENTENCE_END.split(text):
            absent = [name for name in _TOOL_NAME.findall(sentence) if name not in self._specs]
            if absent:
                missing.extend(absent)
            elif sentence:
                kept.append(sentence)
        if missing and explain:
            kept.append(self._why_not_offered(missing[0]))
        return " ".join(kept)

    def _why_not_offered(self, name: str) -> str:
        toolset_name = TOOLSET_OF_TOOL.get(name)
        if toolset_name is None:  # a dynamic tool
            return "The tool for that comes with --dynamic-toolsets."
        spec = tool_spec(name)
        if self.read_only and not spec.effect.read_only:
            return "The tool for that changes the portal, and this server runs in read-only mode."
        if self.dynamic and toolset_name not in self.enabled:
            return f"The tool for that comes with toolset '{toolset_name}': enable_toolset adds it."
        if self.allowlist:
            return "The tool for that is not offered by this server (its --tools list leaves it out)."
        return f"The tool for that is in toolset '{toolset_name}', which this server does not offer (--toolsets)."


_POSITION = {name: index for index, name in enumerate(TOOL_NAMES)}
KNOWN_TOOL_NAMES = frozenset(TOOL_NAMES) | {spec.name for spec in DYNAMIC_TOOLS}
_TOOL_NAME = re.compile(r"\b(" + "|".join(sorted(map(re.escape, KNOWN_TOOL_NAMES), key=len, reverse=True)) + r")\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
