"""voximplant.user.get / activatePhone: users' telephony settings (the UF_VI_* user fields) and SIP phones.

voximplant.user.deactivatePhone is not served: its page says it does not work and the source activates the phone
instead (disagreements.md #15), so no tool calls it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from ..calls import Caller, Params
from ..errors import ErrorSpec
from ..php import isset, php_int
from ..state import Method, PortalState, method_table

Access = Literal["all", "own", "none"]
"""How far a role permission reaches: every user's records, the caller's own, or none (roles X / A / -)."""

SIP_SERVER = "ip.b24-sandbox.bitrixphone.com"  # the account's call server, voximplant.com -> bitrixphone.com


class Msg:
    """Texts of this toolset's errors (sent with ``config.error_core_code``); source wording (methods.json)."""

    USER_ID_NOT_SET = "Parameter USER_ID is not set"
    NOT_ALLOWED_TO_MODIFY = "You are not allowed to modify user's settings"


# AccessException: 403 "Access denied! <detail>".
NO_PERMISSION_FOR_USERS = ErrorSpec(
    "ACCESS_DENIED", "Access denied! You have no permission to query selected users", 403
)
# CRestServer::requestConfirmation: webhooks carry no client id (disagreements.md #3).
APPLICATION_CONTEXT_REQUIRED = ErrorSpec("ACCESS_DENIED", "Access denied! Application context required", 403)
CONFIRM_WAITING = ErrorSpec("METHOD_CONFIRM_WAITING", "Waiting for confirmation", 401)
CONFIRM_DENIED = ErrorSpec("METHOD_CONFIRM_DENIED", "Method call denied", 403)


def allowed_user_ids(level: Access, user_id: int) -> set[int] | None:
    """Security\\Helper::getAllowedUserIds: None means everyone."""
    return None if level == "all" else {user_id} if level == "own" else set()


@dataclass
class PhoneSettings:
    enabled: str | None = None  # UF_VI_PHONE: "Y", "N" or never set
    sip_password: str | None = None  # UF_VI_PHONE_PASSWORD
    default_line: str | None = None  # UF_VI_BACKPHONE


def _seed_settings() -> dict[int, PhoneSettings]:
    return {
        1: PhoneSettings("Y", secrets.token_hex(6)),
        2: PhoneSettings("Y", secrets.token_hex(6), default_line="reg133788"),
        3: PhoneSettings("Y", secrets.token_hex(6)),
        4: PhoneSettings("N"),
    }


@dataclass
class UserTelephony:
    """Per-user phone settings, and the "User settings - Modify" permission of each user (default: none)."""

    settings: dict[int, PhoneSettings] = field(default_factory=_seed_settings)
    modify: dict[int, Access] = field(default_factory=lambda: {1: "all", 2: "own", 4: "own", 5: "own"})

    def may_modify(self, caller_id: int, user_id: int) -> bool:
        allowed = allowed_user_ids(self.modify.get(caller_id, "none"), caller_id)
        return allowed is None or user_id in allowed


def user_get(portal: PortalState, params: Params, caller: Caller) -> list[dict[str, Any]]:
    # Order as in source: USER_ID, permission, then the administrator's confirmation.
    if not isset(params, "USER_ID"):
        raise portal.core(Msg.USER_ID_NOT_SET)
    raw = params["USER_ID"]
    values = raw.values() if isinstance(raw, dict) else raw if isinstance(raw, list) else [raw]
    user_ids = [php_int(value) for value in values]
    tables = portal.state(UserTelephony)
    allowed = allowed_user_ids(tables.modify.get(caller.user_id, "none"), caller.user_id)
    if allowed is not None:
        user_ids = [user_id for user_id in user_ids if user_id in allowed]
    if not user_ids:
        raise NO_PERMISSION_FOR_USERS.exc()
    _request_confirmation(portal, caller)
    rows = []
    for user_id in sorted(set(user_ids)):  # CUser::GetList: existing users only, inactive ones included
        user = portal.users.get(user_id)
        if user is None:
            continue
        settings = tables.settings.get(user_id, PhoneSettings())
        rows.append(
            {
                "ID": str(user_id),
                "DEFAULT_LINE": settings.default_line,
                "PHONE_ENABLED": settings.enabled,
                "SIP_SERVER": SIP_SERVER,
                "SIP_LOGIN": f"phone{user_id}",
                "SIP_PASSWORD": settings.sip_password,
                "INNER_NUMBER": user.phone_inner,
            }
        )
    return rows


def _request_confirmation(portal: PortalState, caller: Caller) -> None:
    if caller.client_id is None:
        raise APPLICATION_CONTEXT_REQUIRED.exc()
    answer = portal.config.user_get_confirmation
    if answer == "waiting":
        raise CONFIRM_WAITING.exc()
    if answer == "denied":
        raise CONFIRM_DENIED.exc()


def user_activate_phone(portal: PortalState, params: Params, caller: Caller) -> int:
    user_id = php_int(params.get("USER_ID"))
    if user_id == 0:
        raise portal.core(Msg.USER_ID_NOT_SET)
    tables = portal.state(UserTelephony)
    if not tables.may_modify(caller.user_id, user_id):
        raise portal.core(Msg.NOT_ALLOWED_TO_MODIFY)
    if user_id in portal.users:  # SetPhoneActive on an unknown id changes nothing, and still answers 1
        settings = tables.settings.setdefault(user_id, PhoneSettings())
        settings.enabled = "Y"
        settings.sip_password = settings.sip_password or secrets.token_hex(6)
    return 1


METHODS = method_table(
    {
        "voximplant.user.get": Method(user_get),
        "voximplant.user.activatePhone": Method(user_activate_phone),
    }
)
