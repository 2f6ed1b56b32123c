"""Wiring: the REST client, its token store and rate bucket, the shared state and the call journal, built from
checked `Settings`. Everything that opens a connection or a file to write is here; `settings` only reads."""

from __future__ import annotations

from typing import TYPE_CHECKING

from b24_telephony_mcp.bitrix import BitrixClient, BitrixError, OAuthAuth, TokenPair, TokenStore, WebhookAuth
from b24_telephony_mcp.bitrix.pair_store import FilePairStore, PairStore
from b24_telephony_mcp.common.redact import register_secret
from b24_telephony_mcp.config.settings import AppConfig, ConfigError, Settings, WebhookConfig, application_key
from b24_telephony_mcp.state.journal import CallJournal, RedisCallJournal, SqliteCallJournal
from b24_telephony_mcp.tools import ToolContext
from b24_telephony_mcp.tools.connection import Connection, FixedConnection

if TYPE_CHECKING:
    from b24_telephony_mcp.bitrix.redis_state import RedisApprovals, RedisState
    from b24_telephony_mcp.events.drain import ClientSource, Ingest, OfflineDrainer
    from b24_telephony_mcp.events.hub import EventHub
    from b24_telephony_mcp.events.store import EventStore


async def open_state(settings: Settings) -> RedisState | None:
    """The shared state store (B24_REDIS_URL) once it answers, or None for this process's own files."""
    if settings.redis_url is None:
        return None
    from b24_telephony_mcp.bitrix.redis_state import RedisState

    state = RedisState(settings.redis_url)
    try:
        await state.ping()
    except BitrixError as exc:
        await state.aclose()
        advice = "Check B24_REDIS_URL and that Redis runs and accepts connections from here."
        description = exc.description[0].upper() + exc.description[1:]
        raise ConfigError(f"{description}. {advice if exc.retryable else exc.hint}") from None
    return state


async def shared_approvals(state: RedisState | None) -> RedisApprovals | None:
    """What confirmations share across replicas (None: this process keeps its own)."""
    if state is None:
        return None
    try:
        return await state.approvals()
    except BitrixError as exc:  # Redis went away since the start-up check
        raise ConfigError(f"{exc.description}.") from None


async def is_ready(client: BitrixClient, state: RedisState | None) -> bool:
    """Whether this replica can serve a call: its state store answers and holds a token pair (application)."""
    if state is None:
        return True  # the pair is in this process's memory
    try:
        if isinstance(client.auth, OAuthAuth):
            return await client.auth.store.load() is not None
        await state.ping()
    except (BitrixError, ValueError):
        return False
    return True


async def build_client(settings: Settings, state: RedisState | None = None) -> BitrixClient:
    """The REST client, its OAuth pair read from the store (seeded from the settings when it has none); with a
    shared `state` (Redis) the pair and the rate limit are those of every replica."""
    portal = settings.portal
    if isinstance(portal, WebhookConfig):
        auth: WebhookAuth | OAuthAuth = WebhookAuth(portal.url)
        portal_url = portal.url
    else:
        portal_url = portal.portal_url
        try:
            auth = await OAuthAuth.open(
                portal.portal_url,
                portal.client_id,
                portal.client_secret,
                portal.token_url,
                pair_store(portal, state),
                await seed_pair(portal, state),
            )
        except ValueError as exc:  # no tokens anywhere, or an unreadable token file
            raise ConfigError(str(exc)) from None
        except BitrixError as exc:  # Redis failed between the start-up check and here
            raise ConfigError(exc.description) from None
    bucket = state.bucket(portal_url, settings.rate, settings.burst) if state is not None else None
    return BitrixClient(auth, rate=settings.rate, burst=settings.burst, bucket=bucket)


async def seed_pair(portal: AppConfig, state: RedisState | None) -> TokenPair | None:
    """The pair an empty store starts from. The token file (or profile) wins over the environment, as it does
    when it is the store: after a rotation the environment's pair is dead."""
    if state is None:
        return portal.tokens  # the file is the store: it is read as such
    return await FilePairStore(TokenStore(portal.token_file)).seed(portal.tokens)


def pair_store(portal: AppConfig, state: RedisState | None) -> PairStore:
    """Where the application's pair lives: Redis when replicas share `state`, else the token file."""
    if state is not None:
        return state.pair_store(portal.portal_url, portal.client_id)
    return FilePairStore(TokenStore(portal.token_file))


def open_journal(settings: Settings, state: RedisState | None) -> CallJournal:
    """log_external_call's journal: with Redis shared too, so a repeated call resumes on any replica."""
    return RedisCallJournal(state) if state is not None else SqliteCallJournal(settings.journal_file)


def open_event_store(settings: Settings, state: RedisState | None) -> EventStore:
    """Where the events are kept: in Redis when replicas share it, else in the state directory's SQLite file."""
    from b24_telephony_mcp.events.store import DAY, RedisEventStore, SqliteEventStore

    for token in settings.events.application_tokens:
        register_secret(token)
    retention = settings.events.retention_days * DAY
    return RedisEventStore(state, retention) if state is not None else SqliteEventStore(settings.events_file, retention)


def offline_drainer(
    settings: Settings, state: RedisState | None, portal: str, connect: ClientSource, ingest: Ingest
) -> OfflineDrainer:
    """A drainer of `portal`'s offline queue, paced by the settings; with replicas, under the portal's lease (one
    replica drains a portal at a time)."""
    from b24_telephony_mcp.events.drain import OfflineDrainer

    return OfflineDrainer(
        connect,
        ingest,
        idle=settings.events.poll_idle,
        busy=settings.events.poll_waiting,
        lease=state.lease("events", portal) if state is not None else None,
    )


def open_event_hub(settings: Settings, client: BitrixClient, state: RedisState | None) -> EventHub:
    """The application's events on this portal (`open_event_store`); drained only with an application's token (a
    webhook cannot read the offline queue)."""
    from b24_telephony_mcp.events.drain import fixed_client
    from b24_telephony_mcp.events.hub import EventHub

    portal = application_key(settings.portal)
    hub = EventHub(open_event_store(settings, state), portal)
    if isinstance(client.auth, OAuthAuth):
        hub.drainer = offline_drainer(settings, state, portal, fixed_client(client), hub.ingest)
    return hub


def tool_context(settings: Settings, journal: CallJournal, events: EventHub | None = None) -> ToolContext:
    """What the tools get beyond their arguments, from the settings."""
    return ToolContext(
        settings.files,
        reveal_sip_passwords=settings.reveal_sip_passwords,
        confirm_calls=settings.confirm_calls,
        journal=journal,
        application=application_key(settings.portal),
        events=events,
    )


def fixed_connection(
    settings: Settings, client: BitrixClient, journal: CallJournal, events: EventHub | None = None
) -> FixedConnection:
    """The one portal connection of a process serving one portal (stdio, webhook, static-bearer HTTP)."""
    context = tool_context(settings, journal, events)
    return FixedConnection(Connection(client, context, key=context.application))
