"""Service administration (XEP-0133) over Ad-Hoc Commands (XEP-0050): add, delete, count and list users."""

from __future__ import annotations

import functools
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from lxml import etree

from nitro.accounts import create_account, delete_account
from nitro.core.module import AccountEvent, Module, SessionEvent
from nitro.core.router import StanzaEvent
from nitro.modules.disco import DiscoEvent
from nitro.storage.errors import AlreadyExists
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, InvalidForm, Option, find_form, form_type_field
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.stanza import child, element, iq_result

if TYPE_CHECKING:
    from nitro.core.context import Core

SESSION_LIFETIME = 600.0  # an unfinished command expires after ten minutes
MAX_SESSIONS_PER_REQUESTER = 5  # starting a sixth drops the oldest
DEFAULT_LIST_ITEMS = 100
MAX_LIST_ITEMS = 10_000  # even "none" is truncated here (XEP-0133 §4.18 allows truncating)

_C = f"{{{ns.COMMANDS}}}"
_ACTIONS = frozenset({"execute", "cancel", "prev", "next", "complete"})


def _command_error(
    condition: Literal["bad-request", "not-allowed"], specific: str, text: str | None = None
) -> StanzaError:
    """A XEP-0050 §4.4 error: a general condition with a specific one in the commands namespace."""
    return StanzaError(condition, text, app_condition=element(ns.COMMANDS, specific))


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a command completed: a note for the admin (XEP-0050 §4.3) and maybe a result form."""

    note: str
    note_type: str = "info"
    form: Form | None = None


@dataclass(slots=True)
class Context:
    """What a command runs with; `after_reply` runs once the result has been sent."""

    server: Core
    requester: JID
    after_reply: list[Callable[[], Awaitable[object]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Command:
    """One command node: an optional form to fill (else it runs at once) and what it does."""

    node: str
    name: str
    run: Callable[[Context, Form | None], Awaitable[Outcome]]
    form: Callable[[Core], Form] | None = None


@dataclass(slots=True)
class CommandSession:
    id: str
    node: str
    requester: JID  # full JID: a session belongs to one requester/responder pair (XEP-0050 §3.3)
    started: float


class CommandSessions:
    """Unfinished multi-stage commands, bounded per requester and in time."""

    def __init__(
        self,
        lifetime: float = SESSION_LIFETIME,
        per_requester: int = MAX_SESSIONS_PER_REQUESTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime = lifetime
        self.per_requester = per_requester
        self._clock = clock
        self._sessions: dict[str, CommandSession] = {}  # insertion order is age order
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._sessions)

    def new_id(self, node: str) -> str:
        """A session id never handed out before (XEP-0050 §3.3), e.g. 'add-user:7-1f2e3d4c5b6a'."""
        return f"{node.rpartition('#')[2]}:{next(self._counter)}-{secrets.token_hex(6)}"

    def start(self, node: str, requester: JID) -> CommandSession:
        """A new session; the requester's oldest goes if it already has `per_requester` of them."""
        self.expire()
        mine = [s for s in self._sessions.values() if s.requester.bare == requester.bare]
        for old in mine[: max(0, len(mine) - self.per_requester + 1)]:
            del self._sessions[old.id]
        session = CommandSession(self.new_id(node), node, requester, self._clock())
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> CommandSession | None:
        self.expire()
        return self._sessions.get(session_id)

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def drop_requester(self, requester: JID) -> None:
        for session in [s for s in self._sessions.values() if s.requester == requester]:
            del self._sessions[session.id]

    def expire(self) -> None:
        horizon = self._clock() - self.lifetime
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if oldest.started > horizon:
                break
            del self._sessions[oldest.id]


# -- the commands (XEP-0133) ------------------------------------------------------------------------


def _admin_form(title: str, instructions: str, *fields: Field) -> Form:
    return Form("form", (form_type_field(ns.ADMIN), *fields), title=title, instructions=(instructions,))


def _result(*fields: Field) -> Form:
    return Form("result", (form_type_field(ns.ADMIN), *fields))


def _local_account(server: Core, text: str) -> str:
    """The username of a JID on this server; the wrong domain or a full JID is not-acceptable."""
    try:
        jid = JID.parse(text.strip())
    except InvalidJID as exc:
        raise StanzaError("jid-malformed", f"{text!r} is not a JID: {exc}") from exc
    if jid.domain != server.domain or jid.local is None or jid.resource is not None:
        raise StanzaError("not-acceptable", f"{text!r} is not an account JID of {server.domain}")
    return jid.local


def _required(form: Form | None, var: str) -> str:
    value = form.value(var) if form is not None else None
    if not value:
        raise _bad_payload(f"the field {var!r} is required")
    return value


def _bad_payload(text: str) -> StanzaError:
    return _command_error("bad-request", "bad-payload", text)


def _add_user_form(server: Core) -> Form:
    return _admin_form(
        "Adding a User",
        "Fill out this form to add a user.",
        Field("accountjid", "jid-single", "The Jabber ID for the account to be added", required=True),
        Field("password", "text-private", "The password for this account", required=True),
        Field("password-verify", "text-private", "Retype password", required=True),
    )


async def _add_user(context: Context, form: Form | None) -> Outcome:
    """XEP-0133 §4.1; an existing account is a conflict (§5)."""
    server = context.server
    username = _local_account(server, _required(form, "accountjid"))
    password = _required(form, "password")
    if form is not None and form.value("password-verify") != password:
        raise StanzaError("not-acceptable", "the passwords do not match")
    minimum = server.config.registration.min_password_length
    if len(password) < minimum:
        raise StanzaError("not-acceptable", f"the password must have at least {minimum} characters")
    try:
        await create_account(
            server.storage, username, password, iterations=server.config.auth.scram_iterations
        )
    except AlreadyExists as exc:
        raise StanzaError("conflict", f"{username}@{server.domain} already exists") from exc
    await server.bus.fire("account-created", AccountEvent(username))
    return Outcome(f"Account {username}@{server.domain} created")


def _delete_user_form(server: Core) -> Form:
    return _admin_form(
        "Deleting a User",
        "Fill out this form to delete a user.",
        Field("accountjids", "jid-multi", "The Jabber ID(s) to delete", required=True),
    )


async def _delete_user(context: Context, form: Form | None) -> Outcome:
    """XEP-0133 §4.2: the accounts go with their data, their sessions are ended."""
    server = context.server
    texts = [text for text in (form.values("accountjids") if form is not None else ()) if text.strip()]
    if not texts:
        raise _bad_payload("the field 'accountjids' is required")
    usernames = list(dict.fromkeys(_local_account(server, text) for text in texts))  # all valid first
    deleted: list[str] = []
    missing: list[str] = []
    for username in usernames:
        if username == context.requester.local and context.requester.domain == server.domain:
            if await server.storage.accounts.exists(username):  # the admin's own stream ends last
                deleted.append(username)
                context.after_reply.append(functools.partial(delete_account, server, username))
            else:
                missing.append(username)
        elif await delete_account(server, username):
            deleted.append(username)
        else:
            missing.append(username)
    parts = []
    if deleted:
        parts.append("Deleted: " + ", ".join(f"{u}@{server.domain}" for u in deleted))
    if missing:
        parts.append("No such account: " + ", ".join(f"{u}@{server.domain}" for u in missing))
    return Outcome(". ".join(parts), "warn" if missing else "info")


async def _registered_users_num(context: Context, _form: Form | None) -> Outcome:
    """XEP-0133 §4.13: answered at once, no form."""
    count = await context.server.storage.accounts.count()
    field_ = Field("registeredusersnum", None, "The number of registered users", (str(count),))
    return Outcome(f"{count} registered users", form=_result(field_))


_LIST_SIZES = ("25", "50", "75", "100", "150", "200")


def _registered_users_list_form(server: Core) -> Form:
    options = (*(Option(size, size) for size in _LIST_SIZES), Option("none", "None"))
    return _admin_form(
        "Requesting List of Registered Users",
        "Fill out this form to request the registered users of this service.",
        Field(
            "max_items",
            "list-single",
            "Maximum number of items to show",
            (str(DEFAULT_LIST_ITEMS),),
            options=options,
        ),
    )


async def _registered_users_list(context: Context, form: Form | None) -> Outcome:
    """XEP-0133 §4.18: at most `max_items` users, in code point order."""
    server = context.server
    choice = (form.value("max_items") if form is not None else None) or str(DEFAULT_LIST_ITEMS)
    if choice != "none" and choice not in _LIST_SIZES:
        raise _bad_payload(f"max_items must be one of {', '.join(_LIST_SIZES)} or none")
    limit = MAX_LIST_ITEMS if choice == "none" else int(choice)
    usernames = await server.storage.accounts.list_usernames(limit=limit + 1)
    truncated = len(usernames) > limit
    jids = tuple(f"{username}@{server.domain}" for username in usernames[:limit])
    field_ = Field("registereduserjids", "jid-multi", "The list of all users", jids)
    note = f"{len(jids)} users" + (" (truncated)" if truncated else "")
    return Outcome(note, "warn" if truncated else "info", _result(field_))


COMMANDS: tuple[Command, ...] = (
    Command(f"{ns.ADMIN}#add-user", "Add User", _add_user, _add_user_form),
    Command(f"{ns.ADMIN}#delete-user", "Delete User", _delete_user, _delete_user_form),
    Command(f"{ns.ADMIN}#get-registered-users-num", "Get Number of Registered Users", _registered_users_num),
    Command(
        f"{ns.ADMIN}#get-registered-users-list",
        "Get List of Registered Users",
        _registered_users_list,
        _registered_users_list_form,
    ),
)


# -- XEP-0050 protocol ------------------------------------------------------------------------------


def _command_element(node: str, session_id: str, status: str) -> etree._Element:
    return element(ns.COMMANDS, "command", node=node, sessionid=session_id, status=status)


def load(module: Module) -> None:
    server = module.server
    commands = {command.node: command for command in COMMANDS}
    sessions = CommandSessions()
    module.add_feature(ns.COMMANDS)

    def is_admin(jid: JID) -> bool:
        return jid.bare in server.config.admin_jids

    async def list_commands(event: DiscoEvent) -> bool:
        """XEP-0050 §2.2: the command list, which only admins see filled (XEP-0133 §3)."""
        if is_admin(event.requester):
            for command in COMMANDS:
                event.add_item(server.domain, command.node, command.name)
        return True

    async def commands_info(event: DiscoEvent) -> bool:
        event.add_identity("automation", "command-list")
        return True

    def command_info(command: Command) -> Callable[[DiscoEvent], Awaitable[bool]]:
        async def info(event: DiscoEvent) -> bool:
            """XEP-0050 §2.2: a command node's identity; forbidden to those who may not run it."""
            if not is_admin(event.requester):
                raise StanzaError("forbidden")
            event.add_identity("automation", "command-node", command.name)
            event.add_feature(ns.COMMANDS)
            event.add_feature(ns.DATA_FORMS)
            return True

        return info

    async def execute(event: StanzaEvent) -> bool:
        """XEP-0050 §2.4: start, complete or cancel a command (one form per command, §3.4 actions)."""
        request = event.stanza.find(f"{_C}command")
        assert request is not None
        command = commands.get(request.get("node") or "")
        if command is None:
            raise StanzaError("item-not-found", "no such command")
        if not is_admin(event.from_):
            raise StanzaError("forbidden", "only server administrators may run this command")
        action = request.get("action") or "execute"
        if action not in _ACTIONS:
            raise _command_error("bad-request", "malformed-action")
        session_id = request.get("sessionid")
        if session_id is None:
            if action != "execute":
                raise _command_error("bad-request", "bad-action")
            if command.form is None:  # nothing to ask: run at once, completed in one step
                await complete(event, command, sessions.new_id(command.node), None)
                return True
            started = sessions.start(command.node, event.from_)  # stage one: hand out the form
            reply = _command_element(command.node, started.id, "executing")
            actions = child(reply, ns.COMMANDS, "actions", execute="complete")
            child(actions, ns.COMMANDS, "complete")
            reply.append(command.form(server).to_element())
            await event.reply(iq_result(event.stanza, reply))
            return True
        session = sessions.get(session_id)
        if session is None:
            raise _command_error("not-allowed", "session-expired")
        if session.requester != event.from_ or session.node != command.node:
            raise _command_error("bad-request", "bad-sessionid")
        if action == "cancel":
            sessions.end(session.id)
            await event.reply(iq_result(event.stanza, _command_element(command.node, session.id, "canceled")))
            return True
        if action in ("prev", "next"):
            raise _command_error("bad-request", "bad-action")  # one form per command: complete only
        try:
            form = find_form(request)
        except InvalidForm as exc:
            raise _bad_payload(str(exc)) from exc
        if form is None or form.type not in ("submit", "cancel"):  # §3.5.1: cancel counts as submit
            raise _bad_payload("submit the form to complete the command")
        await complete(event, command, session.id, form)  # a StanzaError keeps the session: resubmit
        sessions.end(session.id)
        return True

    async def complete(event: StanzaEvent, command: Command, session_id: str, form: Form | None) -> None:
        """Run the command; answer status completed with its note (§4.3), then do what must follow."""
        context = Context(server, event.from_)
        outcome = await command.run(context, form)
        module.log.info("%s ran %s: %s", event.from_, command.node, outcome.note)
        reply = _command_element(command.node, session_id, "completed")
        child(reply, ns.COMMANDS, "note", outcome.note, type=outcome.note_type)
        if outcome.form is not None:
            reply.append(outcome.form.to_element())
        await event.reply(iq_result(event.stanza, reply))
        for follow_up in context.after_reply:
            await follow_up()

    async def unbind(event: SessionEvent) -> None:
        sessions.drop_requester(event.session.jid)

    module.hook(f"iq-set/host/{ns.COMMANDS}:command", execute)
    module.hook(f"disco-items/host/{ns.COMMANDS}", list_commands)
    module.hook(f"disco-info/host/{ns.COMMANDS}", commands_info)
    for command in COMMANDS:
        module.hook(f"disco-info/host/{command.node}", command_info(command))
    module.hook("resource-unbind", unbind)
