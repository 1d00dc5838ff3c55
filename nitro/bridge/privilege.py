"""Server powers for plugins through standards, granted per plugin in config: XEP-0356 privileged entity
(roster get/set, messages on behalf of users, IQ permission per namespace; the `<privilege/>` message
after the handshake) and XEP-0355 namespace delegation of server IQs (the `<delegation/>` message, disco
features, IQs forwarded and answered, an error for the client after `delegation_timeout`)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
from collections.abc import Callable
from typing import Any, Final

from lxml import etree

from nitro.bridge.host import PluginHost
from nitro.bridge.link import ComponentLink
from nitro.core.context import Core
from nitro.core.events import PASS, STANZA_FILTER, Drop, RoutedStanza, Verdict
from nitro.modules.roster import item_element, roster_lock, save
from nitro.storage.models import RosterItem
from nitro.xmpp import ns
from nitro.xmpp.content_ns import to_external, to_internal
from nitro.xmpp.errors import StanzaError, error_reply
from nitro.xmpp.jid import JID, InvalidJID
from nitro.xmpp.stanza import iq_result

log = logging.getLogger(__name__)

PRIVILEGE: Final = "urn:xmpp:privilege:2"
DELEGATION: Final = "urn:xmpp:delegation:2"
FORWARD: Final = "urn:xmpp:forward:0"
_C: Final = ns.COMPONENT
_SUBSCRIPTIONS: Final = ("none", "to", "from", "both")
_ids = itertools.count(1)


def _element(tag: str, namespace: str = _C, **attributes: str) -> etree._Element:
    return etree.Element(f"{{{namespace}}}{tag}", attributes, nsmap=ns.default_ns(namespace))


def _allows(granted: str | None, wanted: str) -> bool:
    return granted == "both" or granted == wanted


class Powers:
    """The privileges and delegations of every plugin, and the link extension that exercises them."""

    def __init__(self, core: Core, hosts: dict[str, PluginHost]) -> None:
        self.core = core
        self.hosts = {host.domain: host for host in hosts.values()}
        self._delegated: dict[str, PluginHost] = {}  # namespace → the plugin answering it
        # (plugin domain, request id) → the delegated IQ waiting for that plugin's answer
        self._pending: dict[tuple[str, str], asyncio.Future[etree._Element]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._undo: list[Callable[[], None]] = []
        for host in hosts.values():
            host.on_attach.append(functools.partial(self._advertise, host))
            for namespace in host.entry.delegations:
                self._delegated[namespace] = host
                self._undo.append(core.disco.add_feature(namespace))  # §5: the server's disco shows it
        if self._delegated:
            self._undo.append(core.bus.add_filter(STANZA_FILTER, self._delegate, priority=10**9))
        # XEP-0356 §8 managed_entity: the plugin gets every presence the server's users broadcast
        self._watchers = [h for h in hosts.values() if h.entry.privileges.get("presence") == "managed_entity"]
        if self._watchers:
            for event in ("initial-presence", "presence-changed"):
                self._undo.append(core.bus.add(event, self._presence, priority=-(10**9)))

    # -- advertising (XEP-0356 §4, XEP-0355 §4) -------------------------------------------------------

    def _advertise(self, host: PluginHost, link: object) -> None:
        if not isinstance(link, ComponentLink):
            return
        messages = []
        if host.entry.privileges:
            privilege = _element("privilege", PRIVILEGE)
            for access, value in host.entry.privileges.items():
                perm = etree.SubElement(privilege, f"{{{PRIVILEGE}}}perm", access=access)
                if access == "iq":
                    for namespace, kind in value.items():
                        etree.SubElement(perm, f"{{{PRIVILEGE}}}namespace", ns=namespace, type=kind)
                else:
                    perm.set("type", str(value))
            messages.append(privilege)
        if host.entry.delegations:
            delegation = _element("delegation", DELEGATION)
            for namespace in host.entry.delegations:
                etree.SubElement(delegation, f"{{{DELEGATION}}}delegated", namespace=namespace)
            messages.append(delegation)
        for payload in messages:
            message = _element("message", id=f"adv-{next(_ids)}", to=host.domain)
            message.set("from", self.core.domain)
            message.append(payload)
            self._spawn(link.send(message))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _presence(self, event: Any) -> None:
        """A user's presence changed: each watching plugin gets it (unavailable when it went away)."""
        session = event.session
        current = session.presence
        for host in self._watchers:
            if not host.connected:
                continue  # presence is state, not history: a plugin gets the next change
            presence = etree.Element(f"{{{ns.CLIENT}}}presence", nsmap=ns.default_ns(ns.CLIENT))
            presence.set("from", str(session.jid))
            presence.set("to", host.domain)
            if current is None:
                presence.set("type", "unavailable")
            else:
                presence.extend(copy.deepcopy(child) for child in current)
            with contextlib.suppress(StanzaError):  # it went down meanwhile
                await host.deliver(presence)

    # -- the link extension ---------------------------------------------------------------------------

    async def handle(self, link: ComponentLink, element: etree._Element) -> bool:
        host = self.hosts.get(link.domain or "")
        if host is None:
            return False
        kind = etree.QName(element).localname
        if kind == "iq" and element.get("type") in ("result", "error"):
            future = self._pending.get((host.domain, element.get("id") or ""))  # only its own requests
            if future is not None and not future.done():
                future.set_result(element)
                return True
            return False
        try:
            if kind == "message" and element.find(f"{{{PRIVILEGE}}}privilege") is not None:
                await self._send_on_behalf(host, element)
                return True
            if kind == "iq" and element.get("type") in ("get", "set"):
                if element.find(f"{{{ns.ROSTER}}}query") is not None and self._local_user(element.get("to")):
                    await link.send(await self._roster(host, element))
                    return True
                if element.find(f"{{{PRIVILEGE}}}privileged_iq") is not None:
                    await link.send(await self._privileged_iq(host, element))
                    return True
        except StanzaError as error:
            if element.get("type") != "error":
                await link.send(error_reply(element, error))
            return True
        return False

    def _local_user(self, text: str | None) -> str | None:
        """The localpart when `text` is a local account's bare JID."""
        try:
            jid = JID.parse(text or "")
        except InvalidJID:
            return None
        return jid.local if jid.domain == self.core.domain and jid.resource is None else None

    async def _send_on_behalf(self, host: PluginHost, message: etree._Element) -> None:
        """XEP-0356 §6: a forwarded message from a local user, routed as that user's."""
        if host.entry.privileges.get("message") != "outgoing":
            raise StanzaError("forbidden", "the message privilege was not granted to this plugin")
        inner = message.find(f"{{{PRIVILEGE}}}privilege/{{{FORWARD}}}forwarded/*")
        if inner is None or etree.QName(inner).localname != "message":
            raise StanzaError("bad-request", "no forwarded message")
        inner = to_internal(copy.deepcopy(inner), _C)
        sender = JID.parse(inner.get("from") or "")
        if sender.domain != self.core.domain or sender.local is None:
            raise StanzaError("forbidden", "only messages from this server's users")
        await self.core.router.route(inner)

    async def _roster(self, host: PluginHost, iq: etree._Element) -> etree._Element:
        """XEP-0356 §5: a user's roster, read or written by the plugin."""
        iq_type = iq.get("type") or ""
        if not _allows(host.entry.privileges.get("roster"), iq_type):
            raise StanzaError("forbidden", f"the roster {iq_type} privilege was not granted to this plugin")
        username = self._local_user(iq.get("to"))
        assert username is not None
        rosters = self.core.storage.rosters
        if iq_type == "get":
            roster = await rosters.get(username)
            query = _element("query", ns.ROSTER, ver=str(roster.version))
            for item in roster.items:
                if item.in_roster:
                    query.append(item_element(item, item.jid))
            return to_external(iq_result(iq, query), _C)
        async with roster_lock(self.core, username):
            for element in iq.findall(f"{{{ns.ROSTER}}}query/{{{ns.ROSTER}}}item"):
                jid = str(JID.parse(element.get("jid") or ""))
                subscription = element.get("subscription") or "none"
                before = await rosters.get_item(username, jid)
                if subscription == "remove":
                    await save(self.core, username, before, None)
                    continue
                if subscription not in _SUBSCRIPTIONS:
                    raise StanzaError("bad-request", f"subscription {subscription!r}")
                groups = tuple(g.text or "" for g in element.findall(f"{{{ns.ROSTER}}}group"))
                after = dataclasses.replace(
                    before or RosterItem(jid),
                    name=element.get("name") or None,
                    groups=groups,
                    subscription=subscription,  # type: ignore[arg-type]
                    in_roster=True,
                )
                await save(self.core, username, before, after)
        return to_external(iq_result(iq), _C)

    async def _privileged_iq(self, host: PluginHost, iq: etree._Element) -> etree._Element:
        """XEP-0356 §7: an IQ on behalf of a user, for the namespaces granted (else forbidden)."""
        inner = iq.find(f"{{{PRIVILEGE}}}privileged_iq/*")
        if inner is None or etree.QName(inner).localname != "iq" or len(inner) != 1:
            raise StanzaError("bad-request", "privileged_iq carries one IQ with one payload")
        namespace = etree.QName(inner[0]).namespace or ""
        granted = (host.entry.privileges.get("iq") or {}).get(namespace)
        if inner.get("type") not in ("get", "set") or not _allows(granted, inner.get("type") or ""):
            raise StanzaError("forbidden", f"no IQ {inner.get('type')} privilege for {namespace}")
        user = self._local_user(inner.get("from"))
        if user is None:
            raise StanzaError("forbidden", "only IQs from this server's users")
        inner = to_internal(copy.deepcopy(inner), ns.COMPONENT)
        inner.set("id", f"priv-{next(_ids)}")
        try:
            answer = await self.core.router.send_iq(inner, host.entry.delegation_timeout)
        except TimeoutError as exc:
            raise StanzaError("remote-server-timeout", "no answer to the privileged IQ", type="wait") from exc
        wrapper = to_external(iq_result(iq), _C)
        forwarded = etree.SubElement(
            etree.SubElement(wrapper, f"{{{PRIVILEGE}}}privilege", nsmap=ns.default_ns(PRIVILEGE)),
            f"{{{FORWARD}}}forwarded",
            nsmap=ns.default_ns(FORWARD),
        )
        forwarded.append(answer)
        return wrapper

    # -- delegation (XEP-0355 §6) ---------------------------------------------------------------------

    async def _delegate(self, payload: RoutedStanza) -> Verdict:
        """A client's IQ get/set in a delegated namespace, to the server or to an account's bare JID (its own
        when it has no 'to', as ejabberd's mod_delegation does), goes to the plugin instead."""
        stanza = payload.stanza
        kind, iq_type = etree.QName(stanza).localname, stanza.get("type")
        if kind != "iq" or iq_type not in ("get", "set") or payload.origin is None:
            return PASS
        to = payload.to
        if to is not None and (to.resource is not None or to.domain != self.core.domain):
            return PASS
        children = [child for child in stanza if isinstance(child.tag, str)]
        host = self._delegated.get(etree.QName(children[0]).namespace or "") if len(children) == 1 else None
        if host is None:
            return PASS
        self._spawn(self._forward(host, stanza))
        return Drop(None)  # answered by _forward, from the plugin or with an error

    async def _forward(self, host: PluginHost, stanza: etree._Element) -> None:
        request_id = f"deleg-{next(_ids)}"
        wrapper = _element("iq", type=stanza.get("type") or "get", id=request_id, to=host.domain)
        wrapper.set("from", self.core.domain)
        delegation = etree.SubElement(wrapper, f"{{{DELEGATION}}}delegation", nsmap=ns.default_ns(DELEGATION))
        forwarded = etree.SubElement(delegation, f"{{{FORWARD}}}forwarded", nsmap=ns.default_ns(FORWARD))
        forwarded.append(copy.deepcopy(stanza))
        future: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self._pending[host.domain, request_id] = future
        link = host.link
        try:
            if link is None:
                raise StanzaError("service-unavailable", f"{host.domain} is down", type="wait")
            await link.send(wrapper)
            answer = await asyncio.wait_for(future, host.entry.delegation_timeout)
            inner = answer.find(f"{{{DELEGATION}}}delegation/{{{FORWARD}}}forwarded/*")
            if answer.get("type") != "result" or inner is None or etree.QName(inner).localname != "iq":
                raise StanzaError("service-unavailable", f"{host.domain} could not answer", type="wait")
            reply = to_internal(copy.deepcopy(inner), _C)
            sender = JID.parse(stanza.get("from") or self.core.domain)
            answering = stanza.get("to") or str(sender.bare)  # RFC 6120 §10.3.3: the account answers
            for key, value in (("to", stanza.get("from")), ("from", answering)):
                reply.set(key, value or "")
            reply.set("id", stanza.get("id") or "")
            await self.core.router.route(reply)
        except (TimeoutError, ConnectionError):
            log.warning("plugin %s did not answer a delegated IQ in time", host.name)
            timeout = StanzaError("service-unavailable", f"{host.domain} did not answer in time", type="wait")
            await self.core.router.route(error_reply(stanza, timeout))
        except StanzaError as error:
            await self.core.router.route(error_reply(stanza, error))
        finally:
            self._pending.pop((host.domain, request_id), None)

    def close(self) -> None:
        for undo in self._undo:
            undo()
        for task in list(self._tasks):
            task.cancel()
