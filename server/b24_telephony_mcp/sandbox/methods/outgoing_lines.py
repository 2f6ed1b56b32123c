"""voximplant.line.*: the portal's outgoing lines (rented numbers, cloud ``reg<REG_ID>`` and office ``sip<CONFIG_ID>``
SIP connections) and the default one. The line configurations live with the SIP connections (``sip.py``).

As in vi_rest.php: every method needs "Manage numbers - modify"; line.outgoing.set answers 1 even for an unknown
LINE_ID and then changes nothing; line.outgoing.sip.set takes any line configuration's CONFIG_ID, not only the
calling application's (disagreements.md #28). The REST-app pseudo-lines a real portal also accepts as the default
(``REST_APP:<id>`` and external-call handlers' numbers) are not emulated.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..calls import Caller, Params
from ..errors import SandboxRestError
from ..php import php_int, php_str, upper_keys
from ..state import Method, PortalState, method_table
from .sip import LINK_BASE_NUMBER, Msg, line_configs, require_line_modify


def line_get(portal: PortalState, params: Params, caller: Caller) -> dict[str, str] | list[Any]:
    require_line_modify(portal, caller)
    # GetPortalNumbers() escapes the names with htmlspecialcharsbx; an empty PHP array is sent as [].
    return {line_id: escape(name, quote=False).replace('"', "&quot;") for line_id, name in _lines(portal).items()} or []


def line_outgoing_get(portal: PortalState, params: Params, caller: Caller) -> str:
    require_line_modify(portal, caller)
    return line_configs(portal).current_line()


def line_outgoing_set(portal: PortalState, params: Params, caller: Caller) -> int:
    require_line_modify(portal, caller)
    line_id = php_str(upper_keys(params).get("LINE_ID"))
    # SetPortalNumber() stores only a known line (or the linked number); the method answers 1 either way.
    if line_id in _lines(portal) or line_id == LINK_BASE_NUMBER:
        line_configs(portal).default_line = line_id
    return 1


def line_outgoing_sip_set(portal: PortalState, params: Params, caller: Caller) -> int:
    require_line_modify(portal, caller)
    configs = line_configs(portal)
    config_id = php_int(upper_keys(params).get("CONFIG_ID"))
    line_id = configs.line_of_config(config_id) if config_id > 0 else None
    if line_id is None:
        raise SandboxRestError("ERROR_ARGUMENT", Msg.CONFIG_NOT_FOUND, 400)
    configs.default_line = line_id
    return 1


def _lines(portal: PortalState) -> dict[str, str]:
    return line_configs(portal).lines()


METHODS = method_table(
    {
        "voximplant.line.get": Method(line_get),
        "voximplant.line.outgoing.get": Method(line_outgoing_get),
        "voximplant.line.outgoing.set": Method(line_outgoing_set),
        "voximplant.line.outgoing.sip.set": Method(line_outgoing_sip_set),
    }
)
