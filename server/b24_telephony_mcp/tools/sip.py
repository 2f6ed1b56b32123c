"""SIP connections: `voximplant.sip.*`, the office PBXs and cloud SIP providers connected to the built-in telephony.

Field names are the REST parameter names verbatim; descriptions are condensed from the Bitrix24 docs. SIP passwords
in results are masked by the server (`mask_secrets`) and a PASSWORD argument is redacted from logs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from b24_telephony_mcp.tools.base import (
    CONSUMES,
    CREATES,
    OVERWRITES,
    READS,
    NoParams,
    PagedParams,
    RestParams,
    RestResult,
    RowFieldsParams,
    Toolset,
    ToolSpec,
)

LINE_PERMISSION_HINTS = (
    (
        "ACCESS_DENIED",
        "The Bitrix24 user behind these credentials needs the telephony permission 'Manage numbers - modify' "
        "(portal administrators have it); ask an administrator to grant it or to connect the application.",
    ),
)
"""Every voximplant.sip.* and voximplant.line.* method checks this permission first."""

# One sentence names the tool: where it is not offered, only that sentence is left out.
CONFIG_ID_DESC = "A SIP connection of this application. From list_sip_connections."
PASSWORD_DESC = "Password on the server, at most 100 characters."
NOT_OWN_HINT = (
    "ERROR_NOT_FOUND",
    "This application has no SIP connection with this CONFIG_ID (connections made in the portal or by other "
    "applications cannot be changed here). list_sip_connections shows this application's connections.",
)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value  # the portal lower-cases TYPE


SipType = Annotated[Literal["cloud", "office"], BeforeValidator(_lower)]


class AddSipParams(RestParams):
    SERVER: str = Field(description="SIP registration server address.")
    LOGIN: str = Field(description="Login on the server.")
    PASSWORD: str | None = Field(None, max_length=100, description=PASSWORD_DESC + " Needed to register.")
    TYPE: SipType | None = Field(None, description="cloud (default): a SIP provider or cloud PBX; office: your PBX.")
    TITLE: str | None = Field(None, description="Name, unique on the portal. Default: a system name.")


class UpdateSipParams(RestParams):
    # The portal answers 1 and changes nothing without any of them (disagreements.md #13): refused here instead.
    at_least_one_of = (("TITLE", "SERVER", "LOGIN", "PASSWORD"),)

    CONFIG_ID: int = Field(description=CONFIG_ID_DESC)
    TITLE: str | None = Field(None, description="New name, unique on the portal.")
    SERVER: str | None = Field(None, description="New server address.")
    LOGIN: str | None = Field(None, description="New login.")
    PASSWORD: str | None = Field(None, max_length=100, description="New password, at most 100 characters.")


class ListSipParams(PagedParams, RowFieldsParams):
    FILTER: dict[str, Any] | None = Field(
        None,
        description='Conditions on row fields, e.g. {"TYPE": "cloud"}; a key may start with an operator: '
        "! > >= < <= >< (between) % (contains).",
    )
    SORT: str | None = Field(None, description="Field to sort by (with ORDER).")
    ORDER: Literal["ASC", "DESC"] | None = Field(None, description="Sort direction (with SORT).")


class ConfigIdParams(RestParams):
    CONFIG_ID: int = Field(description=CONFIG_ID_DESC)


class RegIdParams(RestParams):
    REG_ID: int = Field(description="Registration of a cloud SIP connection. From list_sip_connections.")


# A connection as the portal returns it; every key optional, since `fields` may keep only some. (A comment, not a
# docstring: a docstring would go into the output schema.)
class SipConnection(RestResult):
    CONFIG_ID: int | str | None = None
    REG_ID: int | str | None = None
    TYPE: str | None = None
    TITLE: str | None = None
    PASSWORD: str | None = None
    REGISTRATION_STATUS_CODE: int | str | None = None


class SipRegistrationStatus(RestResult):
    REG_ID: int
    LAST_UPDATED: str | None = None
    ERROR_MESSAGE: str | None = None
    STATUS_CODE: int | None = None
    STATUS_RESULT: str


class SipConnectorStatus(RestResult):
    FREE_MINUTES: int
    PAID: bool
    PAID_DATE_END: str | None = None


TOOLSET = Toolset(
    name="sip",
    description="SIP connections (office PBX and cloud SIP providers): add, update, list, delete, registration status.",
    tools=(
        ToolSpec(
            name="add_sip_connection",
            method="voximplant.sip.add",
            title="Add SIP connection",
            description="Connect a SIP provider or cloud PBX (TYPE cloud: the portal registers at SERVER; at most 10 "
            "per portal) or your office PBX (it dials in with the INCOMING_* credentials returned). Passwords in "
            "results are masked.",
            params=AddSipParams,
            result=SipConnection,
            effect=CREATES,
            hints=(
                *LINE_PERMISSION_HINTS,
                (
                    "MAX_CLOUD_PBX",
                    "The portal holds 10 cloud SIP connections (all applications together): connect your PBX with "
                    "TYPE office instead. delete_sip_connection frees one.",
                ),
                ("TITLE_EXISTS", "Another line of the portal has this name (case-insensitively); pick another TITLE."),
            ),
        ),
        ToolSpec(
            name="update_sip_connection",
            method="voximplant.sip.update",
            title="Update SIP connection",
            description="Change a SIP connection's TITLE, SERVER, LOGIN or PASSWORD (at least one); new credentials "
            "re-register it. Passwords in results are masked.",
            params=UpdateSipParams,
            result=int,
            effect=OVERWRITES,
            hints=(
                *LINE_PERMISSION_HINTS,
                NOT_OWN_HINT,
                ("TITLE_EXISTS", "Another line of the portal has this name (case-insensitively); pick another TITLE."),
            ),
        ),
        ToolSpec(
            name="list_sip_connections",
            method="voximplant.sip.get",
            title="List SIP connections",
            description="This application's SIP connections, 50 a page: CONFIG_ID, TYPE, TITLE, SERVER, LOGIN, "
            "REG_ID (cloud), INCOMING_* (office), REGISTRATION_STATUS_CODE. Passwords in results are masked.",
            params=ListSipParams,
            result=list[SipConnection],
            effect=READS,
            hints=(
                *LINE_PERMISSION_HINTS,
                ("Unknown field definition", "A FILTER key names no field of a SIP connection; fix its spelling."),
            ),
        ),
        ToolSpec(
            name="delete_sip_connection",
            method="voximplant.sip.delete",
            title="Delete SIP connection",
            description="Delete one of this application's SIP connections, with its cloud registration.",
            params=ConfigIdParams,
            result=int,
            effect=CONSUMES,
            hints=(
                *LINE_PERMISSION_HINTS,
                NOT_OWN_HINT,
                (
                    "REG_ID_NOT_FOUND",
                    "The telephony backend no longer has this connection's registration, so the portal kept it; "
                    "try again later or remove it in the portal's telephony settings.",
                ),
            ),
        ),
        ToolSpec(
            name="get_sip_registration_status",
            method="voximplant.sip.status",
            title="SIP registration status",
            description="Live registration of a cloud SIP connection: STATUS_RESULT success, error, in_progress or "
            "wait, with STATUS_CODE and ERROR_MESSAGE.",
            params=RegIdParams,
            result=SipRegistrationStatus,
            effect=READS,
            hints=(
                *LINE_PERMISSION_HINTS,
                (
                    "REG_ID_NOT_FOUND",
                    "No registration has this REG_ID (office connections have none). list_sip_connections shows "
                    "the REG_ID of each cloud connection.",
                ),
            ),
        ),
        ToolSpec(
            name="get_sip_connector_status",
            method="voximplant.sip.connector.status",
            title="SIP connector status",
            description="Whether the portal's SIP connector is paid (PAID, PAID_DATE_END) and its FREE_MINUTES left.",
            params=NoParams,
            result=SipConnectorStatus,
            effect=READS,
            hints=LINE_PERMISSION_HINTS,
        ),
    ),
)
