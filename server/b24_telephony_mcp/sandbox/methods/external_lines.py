"""telephony.externalLine.*: the app's external lines (numbers shown on calls)."""

from __future__ import annotations

from typing import Any

from ..calls import Caller, Params
from ..php import isset, php_str
from ..records import ExternalLine
from ..state import Method, PortalState, method_table


class Msg:
    """Texts of this toolset's errors (sent with ``config.error_core_code``); source wording (methods.json)."""

    NUMBER_EMPTY = "NUMBER should not be empty"
    LINE_EXISTS = "Line already exists"
    NO_FIELDS_TO_UPDATE = "There are no fields to update"
    LINE_NOT_FOUND = "Could not find line with number {number}"


def line_add(portal: PortalState, params: Params, caller: Caller) -> dict[str, int]:
    number = php_str(params.get("NUMBER")).strip()
    raw_auto_create = params.get("CRM_AUTO_CREATE")  # (CRM_AUTO_CREATE ?? "Y") === "Y"
    crm_auto_create = "N" if raw_auto_create is not None and raw_auto_create != "Y" else "Y"
    if not number:
        raise portal.core(Msg.NUMBER_EMPTY)
    if portal.find_line(number, caller.app_id):
        raise portal.core(Msg.LINE_EXISTS)
    line = ExternalLine(portal.next_id("line"), number, php_str(params.get("NAME")), crm_auto_create, caller.app_id)
    portal.lines[line.id] = line
    return {"ID": line.id}


def line_update(portal: PortalState, params: Params, caller: Caller) -> dict[str, int]:
    changes: dict[str, str] = {}
    if isset(params, "NAME"):
        changes["name"] = php_str(params["NAME"])
    if isset(params, "CRM_AUTO_CREATE"):
        changes["crm_auto_create"] = "Y" if params["CRM_AUTO_CREATE"] == "Y" else "N"
    if not changes:  # checked before NUMBER in source
        raise portal.core(Msg.NO_FIELDS_TO_UPDATE)
    line = _line_for_change(portal, params, caller)
    for attr, value in changes.items():
        setattr(line, attr, value)
    return {"ID": line.id}


def line_delete(portal: PortalState, params: Params, caller: Caller) -> list[Any]:
    line = _line_for_change(portal, params, caller)
    del portal.lines[line.id]
    return []  # an empty Result serialises as []


def line_get(portal: PortalState, params: Params, caller: Caller) -> list[dict[str, str]]:
    return [
        {"NUMBER": ln.number, "NAME": ln.name, "CRM_AUTO_CREATE": ln.crm_auto_create}
        for ln in portal.lines.values()
        if ln.app_id == caller.app_id
    ]


def _line_for_change(portal: PortalState, params: Params, caller: Caller) -> ExternalLine:
    number = php_str(params.get("NUMBER")).strip()
    if not number:
        raise portal.core(Msg.NUMBER_EMPTY)
    line = portal.find_line(number, caller.app_id)
    if line is None:
        raise portal.core(Msg.LINE_NOT_FOUND, number=number)
    return line


METHODS = method_table(
    {
        "telephony.externalLine.add": Method(line_add, app_only=True),
        "telephony.externalLine.update": Method(line_update, app_only=True),
        "telephony.externalLine.delete": Method(line_delete, app_only=True),
        "telephony.externalLine.get": Method(line_get, app_only=True),
    }
)
