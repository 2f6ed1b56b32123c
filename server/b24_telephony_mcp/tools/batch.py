"""`run_batch`: many tool calls in few `batch` requests.

Every item is validated by its own tool's input model before anything is sent. The valid ones go to the portal
in order, packed into batch requests of at most 50 commands (a log_external_call keeps its steps in one request,
linked by `$result` references), paced by the client's limiter. A call that cannot ride in a batch (a REST 3.0
method, a file's content, text the portal would take for a reference) is sent on its own, in its turn. Each
item's outcome is shaped exactly as its tool's own result or error.

Between requests: progress is reported (when the client asked for it) and a cancellation takes effect; a request
that was sent is always finished and recorded first. Only tools this server offers can be run, never the
call-placing ones (they ask the user first, one call at a time), and in read-only mode only the read-only tools
are offered, so only those can be run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import anyio
from pydantic import Field, ValidationError

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.batch import BATCH_METHOD, MAX_COMMANDS, Command, CommandResult, fits_in_batch, not_run
from b24_telephony_mcp.bitrix.errors import UNKNOWN_TOOL
from b24_telephony_mcp.tools.base import (
    READS,
    Effect,
    OfferedTools,
    Planned,
    RestParams,
    RestResult,
    ToolRun,
    ToolSpec,
)
from b24_telephony_mcp.tools.call_log import send

NAME = "run_batch"


def batchable(spec: ToolSpec) -> bool:
    """Not a tool that asks the user first (placing a billed call: one at a time, on purpose), nor run_batch (a
    batch does not nest)."""
    return spec.confirm is None and spec.name != NAME


class BatchItem(RestParams):
    # Self-explanatory names, so no descriptions: every byte of tools/list is context.
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class RunBatchParams(RestParams):
    items: list[BatchItem] = Field(description="In order.")
    halt: bool = Field(False, description="Stop at a failure.")


class BatchOutcome(RestResult):
    items: list[dict[str, Any]]
    """Per item, in input order: `{"result": ...}` or `{"error": {...}}`, as the tool alone answers."""
    failed: int


@dataclass
class _Item:
    index: int
    offered: OfferedTools
    spec: ToolSpec | None = None
    params: RestParams | None = None
    outcome: dict[str, Any] | None = None

    def fail(self, error: BitrixError) -> None:
        if self.spec is not None:
            self.spec.explain(error, self.offered)  # hinted as the tool alone would be
        self.outcome = {"error": error.to_dict()}


async def run_batch(params: RunBatchParams, run: ToolRun) -> dict[str, Any]:
    items = [_validated(index, item, run) for index, item in enumerate(params.items)]
    todo = [item for item in items if item.outcome is None]
    if params.halt and len(todo) < len(items):
        invalid = next(item.index for item in items if item.outcome is not None)
        for item in todo:
            item.fail(not_run(None, f"halt, and item {invalid} is invalid"))
        todo = []
    total, finished = len(items), len(items) - len(todo)
    carry: tuple[_Item, Planned] | None = None
    stopped = False
    try:
        while todo or carry:
            if stopped:
                break
            # One request and what rides on it: planned, sent and recorded even if the call is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                group, carry, todo = await _fill(carry, todo, run)
                commands = [command for _, planned in group for command in planned.commands]
                results = await send(run, commands, halt=params.halt)
                stopped = await _finish(group, results, run, params.halt) and params.halt
            finished += len(group)
            await run.report_progress(finished, total, f"{finished}/{total} items")
    finally:
        # Cancelled between requests, or halted: what was planned but not sent is released, never left claimed.
        with anyio.CancelScope(shield=True):
            for item, planned in [carry] if carry else []:
                await _release(item, planned)
    for item in todo:
        item.fail(not_run(item.spec.method if item.spec else None, "a halt stopped the batch before it"))
    outcomes = [item.outcome or {"error": not_run(None).to_dict()} for item in items]
    return {"result": {"items": outcomes, "failed": sum("error" in outcome for outcome in outcomes)}}


def _validated(index: int, item: BatchItem, run: ToolRun) -> _Item:
    entry = _Item(index, run.offered)
    spec = run.offered.get(item.tool)
    if spec is None or not batchable(spec):
        runnable = ", ".join(name for name, offered in run.offered.items() if batchable(offered))
        entry.fail(BitrixError(UNKNOWN_TOOL, f"run_batch cannot run {item.tool!r}; it runs: {runnable}"))
        return entry
    entry.spec = spec
    try:
        entry.params = spec.validate(item.arguments)
    except ValidationError as exc:
        entry.fail(spec.invalid_arguments(exc))
    return entry


async def _fill(
    carry: tuple[_Item, Planned] | None, todo: list[_Item], run: ToolRun
) -> tuple[list[tuple[_Item, Planned]], tuple[_Item, Planned] | None, list[_Item]]:
    """Plan items in order until the next one would not fit in this request (it is carried to the next)."""
    group: list[tuple[_Item, Planned]] = []
    size = 0
    queue = list(todo)
    while carry or queue:
        if carry is None:
            item = queue.pop(0)
            planned = await _plan(item, run)
            if planned is None:
                group.append((item, Planned((), _nothing)))
                continue
            carry = (item, planned)
        item, planned = carry
        if group and (size + len(planned.commands) > MAX_COMMANDS or len(group) >= MAX_COMMANDS):
            break
        group.append(carry)
        size += len(planned.commands)
        carry = None
    return group, carry, queue


async def _nothing(_results: Sequence[CommandResult]) -> dict[str, Any]:
    return {}


async def _plan(item: _Item, run: ToolRun) -> Planned | None:
    """The item's commands and how to finish it; None (with the item failed) when planning itself failed."""
    spec, params = item.spec, item.params
    assert spec is not None and params is not None
    try:
        if spec.plan is not None:
            return await spec.plan(params, run, f"i{item.index}_")
        if spec.run is None and spec.rest_api == 2:
            rest = await spec.prepare(params, run.context)
            # A file's content goes in a request of its own; a batch command is a query string.
            if "FILE_CONTENT" not in rest and fits_in_batch(rest):
                command = Command(f"i{item.index}", spec.method, rest, read_only=spec.effect.read_only)
                return Planned([command], _one(spec, params))
            return Planned((), _alone(lambda: spec.send(params, rest, run)))  # prepared once (a file read once)
    except BitrixError as exc:
        item.fail(exc)
        return None
    return Planned((), _alone(lambda: spec.execute(params, run)))


def _one(spec: ToolSpec, params: RestParams) -> Any:
    async def finish(results: Sequence[CommandResult]) -> dict[str, Any]:
        return spec.structured(params, results[0].unwrap())

    return finish


def _alone(call: Callable[[], Awaitable[dict[str, Any]]]) -> Any:
    """An item sent in a request of its own, in its turn: `call` sends it."""

    async def finish(_results: Sequence[CommandResult]) -> dict[str, Any]:
        return await call()

    return finish


async def _finish(
    group: list[tuple[_Item, Planned]], results: Sequence[CommandResult], run: ToolRun, halt: bool
) -> bool:
    """Each item's outcome from its slice of the answer, in order; whether any failed. After a failure under
    `halt`, calls that would send requests of their own are released instead."""
    failed = False
    offset = 0
    for item, planned in group:
        mine = results[offset : offset + len(planned.commands)]
        offset += len(planned.commands)
        if item.outcome is not None:  # planning failed
            failed = True
            continue
        if failed and halt and not planned.commands:
            await _release(item, planned)
            continue
        try:
            item.outcome = await planned.finish(mine)
        except BitrixError as exc:
            item.fail(exc)
            failed = True
    return failed


async def _release(item: _Item, planned: Planned) -> None:
    if planned.release is not None:
        await planned.release()
    item.fail(not_run(item.spec.method if item.spec else None, "a halt or cancellation stopped the batch before it"))


RUN_BATCH = ToolSpec(
    name=NAME,
    method=BATCH_METHOD,
    title="Run tool calls in batches",
    description="Many tool calls in few batch requests; per item, that tool's result or error.",
    params=RunBatchParams,
    result=BatchOutcome,
    # It can run any offered tool, deleting lines included.
    effect=Effect(read_only=False, destructive=True, idempotent=False),
    scopes=(),
    run=run_batch,
)
RUN_BATCH_READ_ONLY = replace(RUN_BATCH, effect=READS)
"""run_batch as offered in read-only mode, where only read-only tools are offered for it to run."""
