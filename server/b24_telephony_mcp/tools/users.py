"""Toolset `users`: users' telephony settings (`voximplant.user.get`) and SIP phone activation.

`voximplant.user.deactivatePhone` is left out: its doc page says it does not work and the server source
activates the phone instead (disagreements.md #15).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from b24_telephony_mcp.bitrix.errors import LOCAL_APP_HINT
from b24_telephony_mcp.tools.base import OVERWRITES, READS, RestParams, RestResult, Toolset, ToolSpec

APPROVAL_WAITING_HINT = (
    "A portal administrator must approve this application's use of voximplant.user.get once: the first call sent "
    "the administrators a Bitrix24 notification asking to allow or deny it. Ask one to allow it there, then call "
    "again; until then every call gets this answer. The approval belongs to the access token, so it may be asked "
    "for again after the token is renewed."
)
APPROVAL_DENIED_HINT = (
    "A portal administrator denied this application's use of voximplant.user.get in the Bitrix24 notification "
    "that asked for approval; repeating the call will not help. Ask an administrator to allow it."
)


class UserSettingsParams(RestParams):
    USER_ID: int | Annotated[list[int], Field(min_length=1)] = Field(description="User ID or a list of IDs.")


class UserIdParams(RestParams):
    USER_ID: int = Field(description="User ID.")


class UserPhoneSettings(RestResult):
    ID: str
    DEFAULT_LINE: str | None = None
    PHONE_ENABLED: str | None = None
    SIP_SERVER: str | None = None
    SIP_LOGIN: str | None = None
    SIP_PASSWORD: str | None = None
    INNER_NUMBER: str | None = None


TOOLSET = Toolset(
    name="users",
    description="Users' telephony settings and phone activation.",
    tools=(
        ToolSpec(
            name="get_user_telephony_settings",
            method="voximplant.user.get",
            title="Get users' telephony settings",
            description="Users' SIP phone settings: PHONE_ENABLED, SIP_SERVER, SIP_LOGIN, SIP_PASSWORD (masked), "
            "INNER_NUMBER, DEFAULT_LINE. Needs an application token and a one-time administrator approval.",
            params=UserSettingsParams,
            result=list[UserPhoneSettings],
            effect=READS,
            hints=(
                ("METHOD_CONFIRM_WAITING", APPROVAL_WAITING_HINT),
                ("METHOD_CONFIRM_DENIED", APPROVAL_DENIED_HINT),
                ("Application context required", LOCAL_APP_HINT),
            ),
        ),
        ToolSpec(
            name="activate_user_phone",
            method="voximplant.user.activatePhone",
            title="Activate user's SIP phone",
            description="Enable a user's SIP phone (PHONE_ENABLED=Y), so a desk phone or softphone can log in.",
            params=UserIdParams,
            result=int,
            effect=OVERWRITES,
        ),
    ),
)
