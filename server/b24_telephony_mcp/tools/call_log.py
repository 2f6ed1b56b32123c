"""`log_external_call`: register → finish → attach record → attach transcript, idempotent and resumable. A call
the portal registered itself (click-to-call: OnExternalCallStart's CALL_ID) starts at finish.

The steps go to the portal in one `batch` request, later steps taking CALL_ID from the register command through
a `$result` reference; a recording whose content is uploaded (a local file, FILE_CONTENT) goes in a request of
its own after it, since a batch command is a query string. Bitrix24's own dedupe does not cover finished calls
(disagreements.md #6), so the journal (`state/journal.py`), keyed by application and EXTERNAL_CALL_ID, records which
steps are done and their results:

- a repeat after success answers from the journal without a request;
- a repeat after a partial failure sends only the steps not done (CALL_ID from the journal), so the call is
  never registered twice;
- before sending, the steps are claimed in the journal (compare-and-set, with a lease), so a concurrent attempt
  at the same call, in this process or another, is refused instead of registering it again;
- when a request's answer was lost (network failure after sending, a 5xx), its steps are "unknown"; the next
  attempt first reads the call's statistics row by EXTERNAL_CALL_ID (`voximplant.statistic.get`), which shows
  whether the call was registered and finished, its recording and its transcript. No row means the call was not
  finished: it is registered again, and Bitrix24 returns the same CALL_ID for a still-active call registered in
  the last 30 minutes (platform.md (h); a call back-dated beyond that window is the one case this cannot cover).

The same plan serves a single tool call and an item of run_batch, where several calls share batch requests.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from b24_telephony_mcp.bitrix import BitrixError
from b24_telephony_mcp.bitrix.batch import (
    NOT_RUN as NOT_RUN_CODE,
)
from b24_telephony_mcp.bitrix.batch import (
    Command,
    CommandResult,
    Ref,
    call_batch,
    fits_in_batch,
    outcome_unknown,
)
from b24_telephony_mcp.state.journal import JournalRecord
from b24_telephony_mcp.tools.base import Planned, ToolRun, ToolSpec
from b24_telephony_mcp.tools.call_analytics import STATISTICS_METHOD

log = logging.getLogger(__name__)

LEASE = 300.0
"""How long a claim on a call's pending steps holds while its requests are under way (a crashed attempt's claim
frees itself after this)."""
IN_PROGRESS = "IN_PROGRESS"
OUTCOME_UNKNOWN = "OUTCOME_UNKNOWN"
JOURNAL_UNAVAILABLE = "JOURNAL_UNAVAILABLE"
ALREADY_LOGGED = "ALREADY_LOGGED"

DONE, FAILED, NOT_RUN, UNKNOWN = "done", "failed", "not run", "unknown"
CALL_STEPS = ("register", "finish")
"""The steps that make the call exist and end; the others need both done, and a failure among these leaves
the rest not run."""


@dataclass(frozen=True)
class Step:
    """One REST call of the sequence, built from the tool's arguments."""

    name: str
    spec: ToolSpec
    """The single tool doing this step alone (its method, hints and effect)."""
    params: dict[str, Any]
    """The REST parameters, file content included, without CALL_ID (added when sent)."""
    fingerprint: str
    """A digest of the arguments of this step as given, to recognise a repeat of the same call."""
    uploads: bool = False
    """Carries a file's content: sent in a request of its own, not inside a batch."""
    given: dict[str, Any] | None = None
    """The step's result, known without a request: the portal registered a clicked call itself (CALL_ID of
    OnExternalCallStart), so only the steps after register are sent."""

    def rest(self, call_id: str | Ref | None) -> dict[str, Any]:
        return self.params if call_id is None else {"CALL_ID": call_id, **self.params}


def fingerprint(arguments: dict[str, Any]) -> str:
    text = json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CallSteps(Protocol):
    """The tool's input model: the call's idempotency key and the steps its arguments ask for."""

    EXTERNAL_CALL_ID: str

    async def steps(self, run: ToolRun) -> list[Step]: ...


async def run_alone(params: CallSteps, run: ToolRun) -> dict[str, Any]:
    """The tool called on its own: one batch request for the inline steps, uploads after it."""
    # A cancelled tool call still completes what it claimed and sent, so the journal records what the portal did.
    with anyio.CancelScope(shield=True):
        planned = await plan(params, run, "")
        return await planned.finish(await send(run, planned.commands))


async def send(run: ToolRun, commands: Sequence[Command], *, halt: bool = False) -> list[CommandResult]:
    """The commands' outcomes from one batch request; a failed request gives every command its error."""
    if not commands:
        return []
    try:
        return await call_batch(run.client, commands, halt=halt)
    except BitrixError as exc:
        return [CommandResult(command, error=exc) for command in commands]


async def plan(params: CallSteps, run: ToolRun, prefix: str) -> Planned:
    """Read the journal, settle what an earlier attempt left unknown, claim the pending steps and turn them into
    batch commands; `finish` records the outcome and answers."""
    ledger = Ledger(run, params.EXTERNAL_CALL_ID)
    steps = await params.steps(run)
    for _ in range(3):
        record = await ledger.load()
        entry = record.entry if record else {}
        done = dict(entry.get("steps", {}))
        for step in steps:
            if step.given is not None:
                done.setdefault(step.name, {"state": DONE, "result": step.given, "args": step.fingerprint})
        _check_same_call(steps, done, params.EXTERNAL_CALL_ID)
        if entry.get("lease", 0) > time.time():
            raise BitrixError(
                IN_PROGRESS,
                f"EXTERNAL_CALL_ID {params.EXTERNAL_CALL_ID} is being logged by another call right now",
                retryable=True,
                hint="Repeat the same call in a few seconds; it then answers with that call's outcome.",
            )
        if any(state["state"] == UNKNOWN for state in done.values()):
            done = await _settle_unknown(run, params.EXTERNAL_CALL_ID, done)
        pending = [step for step in steps if done.get(step.name, {}).get("state") != DONE]
        if not pending:
            result = _answer(steps, done)
            if record is None or done != entry.get("steps"):
                await ledger.save({"steps": done}, record.revision if record else 0)
            return Planned((), _answered(result))
        claimed = {**done, **{step.name: {"state": UNKNOWN, "args": step.fingerprint} for step in pending}}
        revision = record.revision if record else 0
        if await ledger.save({"steps": claimed, "lease": time.time() + LEASE}, revision):
            return _commands(steps, pending, done, ledger, revision + 1, prefix)
    raise BitrixError(IN_PROGRESS, "the journal entry kept changing under this call", retryable=True)


def _answered(result: dict[str, Any]) -> Callable[[Sequence[CommandResult]], Awaitable[dict[str, Any]]]:
    async def finish(_results: Sequence[CommandResult]) -> dict[str, Any]:
        return result

    return finish


def _commands(
    steps: list[Step], pending: list[Step], done: dict[str, Any], ledger: Ledger, revision: int, prefix: str
) -> Planned:
    register_key = f"{prefix}register"
    known_call_id = done.get("register", {}).get("result", {}).get("CALL_ID")
    call_id: str | Ref = known_call_id if known_call_id else Ref(register_key, "CALL_ID")
    # Register and finish go together or not at all; a later step alone when it cannot ride along.
    together = all(fits_in_batch(step.rest(None)) for step in pending if step.name in CALL_STEPS)
    inline = [
        step
        for step in pending
        if together and not step.uploads and (step.name in CALL_STEPS or fits_in_batch(step.params))
    ]
    commands = [
        Command(f"{prefix}{step.name}", step.spec.method, step.rest(None if step.name == "register" else call_id))
        for step in inline
    ]

    async def finish(results: Sequence[CommandResult]) -> dict[str, Any]:
        outcomes: dict[str, tuple[str, Any]] = {}
        for step, result in zip(inline, results, strict=True):
            outcomes[step.name] = _outcome(result)
        new_call_id = known_call_id or _call_id(outcomes.get("register"))
        for step in pending:
            if step in inline:
                continue
            if step.name not in CALL_STEPS and not _call_made(done, outcomes):
                outcomes[step.name] = (NOT_RUN, None)
                continue
            if step.name == "finish" and not new_call_id:
                outcomes[step.name] = (NOT_RUN, None)
                continue
            outcome = await _single(ledger.run, step, None if step.name == "register" else new_call_id)
            outcomes[step.name] = outcome
            if step.name == "register":
                new_call_id = _call_id(outcome)
        _cascade(steps, done, outcomes)
        after = dict(done)
        for name, (state, value) in outcomes.items():
            if state == DONE:
                after[name] = {"state": DONE, "result": value, "args": _step(steps, name).fingerprint}
            elif state == UNKNOWN:
                after[name] = {"state": UNKNOWN, "args": _step(steps, name).fingerprint}
            else:
                after.pop(name, None)
        await ledger.save_after({"steps": after}, revision)
        states = [outcomes[step.name][0] for step in steps if step.name in outcomes]
        if all(state == DONE for state in states):
            return _answer(steps, after)
        # The step to report: the one that failed (or may have run), else the first that did not run.
        reported = next((s for s in (FAILED, UNKNOWN) if s in states), NOT_RUN)
        failed = next(step.name for step in steps if outcomes.get(step.name, (DONE,))[0] == reported)
        raise _partial_failure(steps, after, outcomes, failed)

    async def release() -> None:
        await ledger.save_after({"steps": done}, revision)

    return Planned(commands, finish, release)


def _outcome(result: CommandResult) -> tuple[str, Any]:
    if result.response is not None:
        return DONE, result.response.result
    if result.error is None:
        return NOT_RUN, None
    if outcome_unknown(result.error):
        return UNKNOWN, result.error
    return FAILED, result.error


async def _single(run: ToolRun, step: Step, call_id: str | None) -> tuple[str, Any]:
    try:
        response = await run.client.call(step.spec.method, step.rest(call_id), read_only=False)
    except BitrixError as exc:
        return (UNKNOWN if outcome_unknown(exc) else FAILED), exc
    return DONE, response.result


def _call_id(outcome: tuple[str, Any] | None) -> str | None:
    if outcome and outcome[0] == DONE and isinstance(outcome[1], dict):
        call_id = outcome[1].get("CALL_ID")
        return call_id if isinstance(call_id, str) and call_id else None
    return None


def _call_made(done: dict[str, Any], outcomes: dict[str, tuple[str, Any]]) -> bool:
    return all(done.get(name, {}).get("state") == DONE or outcomes.get(name, ("",))[0] == DONE for name in CALL_STEPS)


def _cascade(steps: list[Step], done: dict[str, Any], outcomes: dict[str, tuple[str, Any]]) -> None:
    """After register or finish failed, the later steps' errors are its consequences (CALL_ID missing, call not
    finished): they count as not run, and only the step that really failed is reported."""
    broken = False
    for step in steps:
        state = outcomes[step.name][0] if step.name in outcomes else done.get(step.name, {}).get("state")
        if broken and state == FAILED:
            outcomes[step.name] = (NOT_RUN, None)
        if step.name in CALL_STEPS and state != DONE:
            broken = True


def _step(steps: list[Step], name: str) -> Step:
    return next(step for step in steps if step.name == name)


def _check_same_call(steps: list[Step], done: dict[str, Any], external_call_id: str) -> None:
    """A step already done (or possibly done) with other arguments cannot be done again: say so rather than
    answer with the old result as if these arguments had been logged."""
    changed = [step.name for step in steps if step.name in done and done[step.name].get("args") != step.fingerprint]
    if changed:
        raise BitrixError(
            ALREADY_LOGGED,
            f"EXTERNAL_CALL_ID {external_call_id} was already logged with other arguments for "
            f"{', '.join(changed)}; Bitrix24 cannot change those steps",
            hint="Repeat it with the same arguments, or give another physical call its own EXTERNAL_CALL_ID.",
            steps={name: state.get("state", DONE) for name, state in done.items()},
        )


def _answer(steps: list[Step], done: dict[str, Any]) -> dict[str, Any]:
    results = {step.name: done[step.name]["result"] for step in steps}
    call_id = done.get("register", {}).get("result", {}).get("CALL_ID")
    return {"result": {"CALL_ID": call_id, "steps": results}}


def _partial_failure(
    steps: list[Step], after: dict[str, Any], outcomes: dict[str, tuple[str, Any]], failed: str
) -> BitrixError:
    state, error = outcomes[failed]
    step = _step(steps, failed)
    summary = {s.name: after.get(s.name, {}).get("state") or outcomes.get(s.name, (NOT_RUN,))[0] for s in steps}
    summary[failed] = state
    call_id = after.get("register", {}).get("result", {}).get("CALL_ID")
    done_names = [name for name, value in summary.items() if value == DONE]
    done_text = ", ".join(f"{name} (CALL_ID {call_id})" if name == "register" else name for name in done_names)
    if isinstance(error, BitrixError):
        step.spec.explain(error)
        code, description, status, hint = error.code, error.description, error.http_status, error.hint
    else:
        code, description, status, hint = NOT_RUN_CODE, "not run", None, ""
    if state == UNKNOWN:
        resume = (
            "Its answer was lost, so it may have run; a repeat of log_external_call with the same arguments first "
            "checks the call statistics for this EXTERNAL_CALL_ID and never registers the call twice."
        )
    else:
        resume = f"A repeat of log_external_call with the same EXTERNAL_CALL_ID resumes at {failed}"
        resume += f"; {', '.join(done_names)} will not be sent again." if done_names else "."
    what = "lost its answer" if state == UNKNOWN else "failed"
    return BitrixError(
        code,
        f"step {failed} ({step.spec.method}) {what}: {description}. Done: {done_text or 'nothing'}.",
        status,
        retryable=state == UNKNOWN or (isinstance(error, BitrixError) and error.retryable),
        hint=f"{hint} {resume}".strip(),
        method=step.spec.method,
        steps=summary,
    )


async def _settle_unknown(run: ToolRun, external_call_id: str, done: dict[str, Any]) -> dict[str, Any]:
    """Replace "unknown" steps by what the call's statistics row shows (one read); what it does not show as done
    was not done."""
    try:
        response = await run.client.call(
            STATISTICS_METHOD, {"FILTER": {"EXTERNAL_CALL_ID": external_call_id}}, read_only=True
        )
    except BitrixError as exc:
        raise BitrixError(
            OUTCOME_UNKNOWN,
            f"an earlier attempt at EXTERNAL_CALL_ID {external_call_id} lost its answer, and the call statistics "
            f"could not be read to see what it did ({exc.code}: {exc.description})",
            exc.http_status,
            retryable=exc.retryable,
            method=STATISTICS_METHOD,
            hint="Nothing was sent, so the call is not registered twice. Grant the application's user the Call "
            "Statistics view permission, or check Telephony > Call statistics for this call, then repeat.",
            steps={name: state["state"] for name, state in done.items()},
        ) from None
    rows = response.result if isinstance(response.result, list) else []
    row = next((row for row in rows if isinstance(row, dict) and row.get("CALL_ID")), None)
    found = _steps_shown(row) if row is not None else {}
    settled = {}
    for name, state in done.items():
        if state["state"] != UNKNOWN:
            settled[name] = state
        elif name in found:
            settled[name] = {"state": DONE, "result": found[name], "args": state.get("args")}
    log.info("settled unknown steps of %s: %s", external_call_id, {n: s["state"] for n, s in settled.items()})
    return settled


def _steps_shown(row: dict[str, Any]) -> dict[str, Any]:
    """What a statistics row shows as done, in the shape of each step's own result (the row's numbers are
    strings, the steps' results integers)."""
    crm = {"CRM_ENTITY_TYPE": row.get("CRM_ENTITY_TYPE") or None, "CRM_ENTITY_ID": _number(row.get("CRM_ENTITY_ID"))}
    found: dict[str, Any] = {
        "register": {"CALL_ID": row["CALL_ID"], **crm},
        "finish": {
            "CALL_ID": row["CALL_ID"],
            "ID": _number(row.get("ID")),
            "CALL_DURATION": _number(row.get("CALL_DURATION")),
            "CALL_FAILED_CODE": row.get("CALL_FAILED_CODE") or None,
            "CRM_ACTIVITY_ID": _number(row.get("CRM_ACTIVITY_ID")),
            **crm,
        },
    }
    if file_id := _number(row.get("RECORD_FILE_ID")):
        found["record"] = {"FILE_ID": file_id}
    if transcript_id := _number(row.get("TRANSCRIPT_ID")):
        found["transcript"] = {"TRANSCRIPT_ID": transcript_id}
    return found


def _number(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


class Ledger:
    """The journal entry of one call, for one application; failures to reach it are BitrixErrors."""

    def __init__(self, run: ToolRun, external_call_id: str) -> None:
        self.run = run
        self.key = external_call_id
        if run.context.journal is None:
            raise BitrixError(
                JOURNAL_UNAVAILABLE,
                "this server has no call journal, so it cannot log calls idempotently",
                hint="Use register_external_call and finish_external_call instead.",
            )
        self.journal = run.context.journal
        self.application = run.context.application

    async def load(self) -> JournalRecord | None:
        return await self._guarded(lambda: self.journal.load(self.application, self.key))

    async def save(self, entry: dict[str, Any], revision: int) -> bool:
        return await self._guarded(lambda: self.journal.save(self.application, self.key, entry, revision))

    async def save_after(self, entry: dict[str, Any], revision: int) -> None:
        """Record an attempt's outcome. Our claim normally still holds; if it lapsed (an attempt slower than the
        lease) and another attempt wrote since, ours is merged over theirs: it reflects what the portal did.
        A journal failure here is logged, not raised: the requests were sent, and their outcome is the answer."""
        try:
            for _ in range(3):
                if await self.save(entry, revision):
                    return
                record = await self.load()
                merged = {**(record.entry.get("steps", {}) if record else {}), **entry["steps"]}
                entry, revision = {"steps": merged}, record.revision if record else 0
        except BitrixError:
            pass
        log.error("could not record the outcome of %s in the call journal", self.key)

    async def _guarded(self, operation: Callable[[], Awaitable[Any]]) -> Any:
        try:
            return await operation()
        except Exception as exc:  # sqlite3, OSError, a remote store's errors alike
            log.exception("call journal failed")
            raise BitrixError(
                JOURNAL_UNAVAILABLE,
                f"the call journal could not be used ({type(exc).__name__})",
                hint="Make the state directory (XDG_STATE_HOME, default ~/.local/state/b24-telephony-mcp) writable.",
            ) from None
