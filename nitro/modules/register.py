"""In-Band Registration (XEP-0077): sign up before login, change the password or cancel the account after."""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from lxml import etree

from nitro.accounts import InvalidUsername, change_password, create_account, delete_account, prepare_username
from nitro.core.module import AccountEvent, Module, StreamFeaturesEvent, UnauthenticatedIq
from nitro.core.router import StanzaEvent
from nitro.core.slots import Slot
from nitro.storage.errors import AlreadyExists, StorageUnavailable
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, InvalidForm, find_form, form_type_field
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.stanza import child, element, iq_result

# Accounts one address may create per window; past that, resource-constraint (type wait). Only created
# accounts count (a taken username or a failed write does not), and `[registration].throttle_exempt`
# addresses are not limited at all (loopback by default, as Prosody does).

_Q = f"{{{ns.REGISTER}}}"
# The account this (unauthenticated) stream registered: one per stream (XEP-0077 §3.1.1).
REGISTERED: Slot[str | None] = Slot(
    "register", lambda _session: None, lambda name: name, lambda data, _s: data
)
_FORM_TYPES = (ns.REGISTER, f"{ns.REGISTER}:changepassword")  # XEP-0077 §13.4
_INSTRUCTIONS = "Choose a username and password to register with this server."


@dataclass(frozen=True, slots=True)
class _Submission:
    username: str | None
    password: str | None
    remove: bool
    other_children: bool  # anything besides <remove/> (XEP-0077 §3.2: then bad-request)


def _read(query: etree._Element) -> _Submission:
    """The fields of an IQ set: the data form if there is one (it takes precedence, XEP-0077 §4)."""
    try:
        form = find_form(query)
    except InvalidForm as exc:
        raise StanzaError("bad-request", str(exc)) from exc
    children = [node for node in query if isinstance(node.tag, str)]
    remove = query.find(f"{_Q}remove") is not None
    other = any(node.tag != f"{_Q}remove" for node in children)
    if (
        form is not None
        and form.type == "submit"
        and (form.form_type in _FORM_TYPES or form.form_type is None)
    ):
        return _Submission(form.value("username"), form.value("password"), remove, other)
    return _Submission(query.findtext(f"{_Q}username"), query.findtext(f"{_Q}password"), remove, other)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class SignupWindow:
    """Sign-ups per address in a sliding window. A slot is reserved before the (awaited) account creation, so
    parallel streams cannot exceed the limit, and given back if the creation fails."""

    def __init__(
        self, limit: int, window: float, exempt: Iterable[str], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self.exempt: tuple[Network, ...] = tuple(ipaddress.ip_network(net, strict=False) for net in exempt)
        self._clock = clock
        self._signups: dict[str, deque[float]] = {}

    def is_exempt(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False  # not an IP address (a UNIX socket, a test transport): limited like any other
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
        return any(address in network for network in self.exempt)

    def _recent(self, host: str) -> deque[float]:
        signups = self._signups.setdefault(host, deque())
        horizon = self._clock() - self.window
        while signups and signups[0] <= horizon:
            signups.popleft()
        return signups

    def reserve(self, host: str) -> float | None:
        """Take a slot for `host`: its timestamp (to `release` on failure), or None when the limit is reached.
        Exempt hosts always get a slot and are never recorded."""
        if self.is_exempt(host):
            return 0.0
        signups = self._recent(host)
        if len(signups) >= self.limit:
            return None
        stamp = self._clock()
        signups.append(stamp)
        if len(self._signups) > 100_000:  # bound memory under a distributed flood: forget the oldest host
            self._signups.pop(next(iter(self._signups)))
        return stamp

    def release(self, host: str, stamp: float) -> None:
        """The reserved sign-up did not create an account: it does not count."""
        signups = self._signups.get(host)
        if signups is not None and stamp in signups:
            signups.remove(stamp)
            if not signups:
                del self._signups[host]


def _registration_form() -> etree._Element:
    """XEP-0077 §3.1 fields, and the same as a data form (§4) for clients that prefer forms."""
    query = element(ns.REGISTER, "query")
    child(query, ns.REGISTER, "instructions", _INSTRUCTIONS)
    child(query, ns.REGISTER, "username")
    child(query, ns.REGISTER, "password")
    form = Form(
        "form",
        (
            form_type_field(ns.REGISTER),
            Field("username", "text-single", "Username", required=True),
            Field("password", "text-private", "Password", required=True),
        ),
        title="Account registration",
        instructions=(_INSTRUCTIONS,),
    )
    query.append(form.to_element())
    return query


def load(module: Module) -> None:
    module.add_slot(REGISTERED)
    server = module.server
    config = server.config.registration
    throttle = SignupWindow(config.max_per_address, config.window, config.throttle_exempt)
    module.add_feature(ns.REGISTER)  # XEP-0077 §10: also says password change and cancel work in-band

    def check_password(password: str | None, *, changing: bool) -> str:
        if not password:
            # §3.1: missing information is not-acceptable; §3.3: an empty new password is incomplete
            raise StanzaError("bad-request" if changing else "not-acceptable", "a password is required")
        if len(password) < config.min_password_length:
            raise StanzaError(
                "not-acceptable", f"the password must have at least {config.min_password_length} characters"
            )
        return password

    async def stream_features(event: StreamFeaturesEvent) -> None:
        """XEP-0077 §8: advertise registration before login, only while it is open and allowed."""
        stream = event.stream
        if config.open and not stream.authenticated and stream.may_negotiate:
            child(event.features, ns.REGISTER_FEATURE, "register")

    async def unauthenticated_get(event: UnauthenticatedIq) -> bool:
        if not config.open:
            raise StanzaError("service-unavailable", "in-band registration is disabled")  # §3.1
        event.stream.send(iq_result(event.stanza, _registration_form()))
        return True

    async def unauthenticated_set(event: UnauthenticatedIq) -> bool:
        """XEP-0077 §3.1.1: a new account, then the client authenticates on this same stream."""
        session = event.stream
        if not config.open:
            raise StanzaError("service-unavailable", "in-band registration is disabled")  # §3.1
        query = event.stanza.find(f"{_Q}query")
        assert query is not None
        submission = _read(query)
        if submission.remove:
            raise StanzaError("unexpected-request", "not registered: log in to cancel an account")  # §3.2
        if session.slots.peek(REGISTERED):
            raise StanzaError("not-acceptable", "one registration per stream: log in now")  # §3.1.1
        peer = session.transport.peer_host
        if not submission.username:
            raise StanzaError("not-acceptable", "a username is required")
        try:
            username = prepare_username(submission.username, server.domain)
        except InvalidUsername as exc:
            raise StanzaError("not-acceptable", f"this username is not allowed: {exc}") from exc
        password = check_password(submission.password, changing=False)
        slot = throttle.reserve(peer)
        if slot is None:
            raise StanzaError(
                "resource-constraint", "too many registrations from your address, wait a minute"
            )
        created = False
        try:
            await create_account(
                server.storage, username, password, iterations=server.config.auth.scram_iterations
            )
            created = True
        except AlreadyExists as exc:
            raise StanzaError("conflict", "this username is taken") from exc
        except StorageUnavailable as exc:
            raise StanzaError("internal-server-error", "try again later", type="wait") from exc
        finally:
            if not created:
                throttle.release(peer, slot)  # only created accounts count
        session.slots.set(REGISTERED, username)
        session.log.info("registered account %s from %s", username, peer)
        session.send(iq_result(event.stanza))
        await server.bus.fire("account-created", AccountEvent(username))
        return True

    async def registered_get(event: StanzaEvent) -> bool:
        """§3.1: an authenticated entity is already registered; show what is on file."""
        query = element(ns.REGISTER, "query")
        child(query, ns.REGISTER, "instructions", "You are registered; send a new password to change it.")
        child(query, ns.REGISTER, "registered")
        child(query, ns.REGISTER, "username", event.from_.local)
        child(query, ns.REGISTER, "password")  # §3.1: MAY be empty; we do not know it
        await event.reply(iq_result(event.stanza, query))
        return True

    async def registered_set(event: StanzaEvent) -> bool:
        session = event.origin
        username = event.from_.local
        if session is None or username is None:
            raise StanzaError("unexpected-request", "only a logged-in user can manage an account")
        query = event.stanza.find(f"{_Q}query")
        assert query is not None
        submission = _read(query)
        if submission.remove:
            # §3.2: answer first, then the account and its sessions go (not-authorized stream error)
            if submission.other_children:
                raise StanzaError("bad-request", "<remove/> must be the only child of <query/>")
            await event.reply(iq_result(event.stanza))
            session.log.info("account %s cancelled in-band", username)
            await delete_account(server, username)
            return True
        # §3.3: a password change names the account and the new password
        if not session.transport.encrypted:
            raise StanzaError("not-authorized", "password changes need an encrypted stream")
        if not submission.username:
            raise StanzaError("bad-request", "the <username/> of the account is required")
        try:
            named = prepare_username(submission.username, server.domain)
        except InvalidUsername:
            named = None
        if named != username:
            raise StanzaError("bad-request", "you can only change the password of your own account")
        password = check_password(submission.password, changing=True)
        changed = await change_password(
            server.storage, username, password, iterations=server.config.auth.scram_iterations
        )
        if not changed:
            raise StanzaError("registration-required", "this account no longer exists")
        session.log.info("password changed in-band")
        await event.reply(iq_result(event.stanza))
        return True

    module.hook("stream-features", stream_features)
    module.hook(f"c2s-unauthenticated/iq-get/{ns.REGISTER}:query", unauthenticated_get)
    module.hook(f"c2s-unauthenticated/iq-set/{ns.REGISTER}:query", unauthenticated_set)
    for to_type in ("host", "self"):
        module.hook(f"iq-get/{to_type}/{ns.REGISTER}:query", registered_get)
        module.hook(f"iq-set/{to_type}/{ns.REGISTER}:query", registered_set)
