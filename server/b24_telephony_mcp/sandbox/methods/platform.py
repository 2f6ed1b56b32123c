"""Platform methods every app and webhook may call (scope `basic`): app.info, scope, profile, server.time; and
user.get (scope `user`), which prompt argument completion reads users from.

`doctor` checks a setup with them and `login` checks a fresh token pair with app.info.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..calls import BASIC_SCOPE, Caller, Page, Params
from ..php import php_bool
from ..records import APP_ID
from ..state import Method, PortalState, method_table

#: What `scope` with full=true lists: the portal's permissions (api-reference/scopes/permissions.md, in part).
ALL_SCOPES = ("basic", "call", "crm", "department", "entity", "im", "imopenlines", "log", "telephony", "user")


def _license(portal: PortalState) -> dict[str, str]:
    """`en_pro100` -> LICENSE, LICENSE_TYPE `pro100`, LICENSE_FAMILY `pro`."""
    license_type = portal.config.license.split("_", 1)[-1]
    family = license_type.rstrip("0123456789") or license_type
    return {"LICENSE": portal.config.license, "LICENSE_TYPE": license_type, "LICENSE_FAMILY": family}


def app_info(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    if caller.auth_type != "oauth":
        # A webhook has no application context: the provider answers with its scopes and the plan (platform.md).
        return {"SCOPE": sorted(portal.granted_scopes(caller)), "LICENSE": portal.config.license}
    return {
        "ID": APP_ID,
        "CODE": portal.config.client_id,
        "VERSION": 1,
        "STATUS": "L",
        "INSTALLED": portal.config.app_installed,
        "PAYMENT_EXPIRED": "N",
        "DAYS": None,
        "LANGUAGE_ID": "en",
        **_license(portal),
    }


def scope(portal: PortalState, params: Params, caller: Caller) -> list[str]:
    if php_bool(params.get("full")):
        return list(ALL_SCOPES)
    return portal.scope_list(caller)


def profile(portal: PortalState, params: Params, caller: Caller) -> dict[str, Any]:
    user = portal.users.get(caller.user_id)
    if user is None or not user.active:
        return {}  # docs: "If the user is inactive, the object is empty"
    return {
        "ID": str(user.id),
        "ADMIN": user.is_admin,
        "NAME": user.name,
        "LAST_NAME": user.last_name,
        "PERSONAL_GENDER": "",
        "TIME_ZONE": "",
    }


def server_time(portal: PortalState, params: Params, caller: Caller) -> str:
    """The portal clock as `YYYY-MM-DDThh:mm:ss±hh:mm`."""
    return datetime.fromtimestamp(portal.clock()).astimezone().isoformat(timespec="seconds")


def user_get(portal: PortalState, params: Params, caller: Caller) -> Page:
    """The portal's users by ID, 50 a page; FILTER by ACTIVE (true/Y or false/N) and ID, the fields we use."""
    wanted = params.get("FILTER") if isinstance(params.get("FILTER"), dict) else {}
    users = sorted(portal.users.values(), key=lambda user: user.id)
    if "ACTIVE" in wanted:
        active = str(wanted["ACTIVE"]).upper() in ("1", "Y", "TRUE")
        users = [user for user in users if user.active == active]
    if "ID" in wanted:
        users = [user for user in users if str(user.id) == str(wanted["ID"])]
    rows = [
        {
            "ID": str(user.id),
            "ACTIVE": user.active,
            "NAME": user.name,
            "LAST_NAME": user.last_name,
            "UF_PHONE_INNER": user.phone_inner or "",
        }
        for user in users
    ]
    return Page.slice(rows, params.get("start"))


METHODS = method_table(
    {
        "app.info": Method(app_info, scope=BASIC_SCOPE),
        "scope": Method(scope, scope=BASIC_SCOPE),
        "profile": Method(profile, scope=BASIC_SCOPE),
        "server.time": Method(server_time, scope=BASIC_SCOPE),
        "user.get": Method(user_get, scope="user"),
    }
)
