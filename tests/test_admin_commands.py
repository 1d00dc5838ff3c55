"""Service administration (XEP-0133) over ad-hoc commands (XEP-0050), driven by slixmpp clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import slixmpp
from conftest import DOMAIN, Clients, wait_for
from slixmpp.exceptions import IqError

from nitro.modules.admin_commands import CommandSessions
from nitro.server import Server
from nitro.xmpp import ns
from nitro.xmpp.jid import JID

ADD_USER = f"{ns.ADMIN}#add-user"
DELETE_USER = f"{ns.ADMIN}#delete-user"
USERS_NUM = f"{ns.ADMIN}#get-registered-users-num"
USERS_LIST = f"{ns.ADMIN}#get-registered-users-list"
PLUGINS = ("xep_0004", "xep_0050")


async def admin_client(clients: Clients) -> Any:
    return await clients.login(await clients.user("admin"), plugins=PLUGINS)


def submit_form(client: Any, fields: Mapping[str, str | list[str]]) -> Any:
    form = client.plugin["xep_0004"].make_form(ftype="submit")
    form.add_field(var="FORM_TYPE", ftype="hidden", value=ns.ADMIN)
    for var, value in fields.items():
        form.add_field(var=var, ftype="jid-multi" if isinstance(value, list) else None, value=value)
    return form


async def execute(client: Any, node: str) -> Any:
    return await client.plugin["xep_0050"].send_command(DOMAIN, node)


async def complete(client: Any, node: str, session_id: str, fields: Mapping[str, str | list[str]]) -> Any:
    return await client.plugin["xep_0050"].send_command(
        DOMAIN, node, action="complete", sessionid=session_id, payload=submit_form(client, fields)
    )


async def run(client: Any, node: str, fields: Mapping[str, str | list[str]]) -> Any:
    """Execute a command, then submit its form: the XEP-0050 §2.4.2 multi-stage flow."""
    started = await execute(client, node)
    assert started["command"]["status"] == "executing"
    return await complete(client, node, started["command"]["sessionid"], fields)


def condition(error: pytest.ExceptionInfo[IqError]) -> str:
    return str(error.value.iq["error"]["condition"])


def command_condition(error: pytest.ExceptionInfo[IqError]) -> str | None:
    """The XEP-0050 §4.4 specific condition in the commands namespace, if any."""
    error_element = error.value.iq.xml.find("{jabber:client}error")
    found = [child.tag for child in error_element if child.tag.startswith(f"{{{ns.COMMANDS}}}")]
    return found[0].split("}")[1] if found else None


# -- discovery ------------------------------------------------------------------------------------------


async def test_admin_sees_the_command_list_others_see_none(clients: Clients) -> None:
    admin = await admin_client(clients)
    alice = await clients.login(await clients.user("alice"))

    listed = await admin.plugin["xep_0030"].get_items(jid=DOMAIN, node=ns.COMMANDS, local=False)
    hidden = await alice.plugin["xep_0030"].get_items(jid=slixmpp.JID(DOMAIN), node=ns.COMMANDS, local=False)

    items = {(str(jid), node, name) for jid, node, name in listed["disco_items"]["items"]}
    assert items == {
        (DOMAIN, ADD_USER, "Add User"),
        (DOMAIN, DELETE_USER, "Delete User"),
        (DOMAIN, USERS_NUM, "Get Number of Registered Users"),
        (DOMAIN, USERS_LIST, "Get List of Registered Users"),
    }
    assert list(hidden["disco_items"]["items"]) == []


async def test_command_node_info_is_for_admins_only(clients: Clients) -> None:
    admin = await admin_client(clients)
    alice = await clients.login(await clients.user("alice"))

    info = await admin.plugin["xep_0030"].get_info(jid=DOMAIN, node=ADD_USER, local=False)
    with pytest.raises(IqError) as error:
        await alice.plugin["xep_0030"].get_info(jid=slixmpp.JID(DOMAIN), node=ADD_USER, local=False)

    assert {(c, t) for c, t, _lang, _name in info["disco_info"]["identities"]} == {
        ("automation", "command-node")
    }
    assert {ns.COMMANDS, ns.DATA_FORMS} <= set(info["disco_info"]["features"])
    assert condition(error) == "forbidden"  # XEP-0050 §2.2


# -- add and delete users -------------------------------------------------------------------------------


async def test_admin_adds_dave_who_then_logs_in(server: Server, clients: Clients) -> None:
    admin = await admin_client(clients)

    started = await execute(admin, ADD_USER)
    form = started["command"]["form"]
    assert {"accountjid", "password", "password-verify"} <= set(form.get_fields())
    assert form.get_fields()["FORM_TYPE"]["value"] == [ns.ADMIN]  # slixmpp reads hidden fields as lists
    done = await complete(
        admin,
        ADD_USER,
        started["command"]["sessionid"],
        {"accountjid": f"dave@{DOMAIN}", "password": "dave's secret", "password-verify": "dave's secret"},
    )

    assert done["command"]["status"] == "completed"
    assert done["command"]["sessionid"] == started["command"]["sessionid"]
    assert done["command"]["notes"] == [("info", f"Account dave@{DOMAIN} created")]
    dave = await clients.login(f"dave@{DOMAIN}", "dave's secret")
    assert str(dave.boundjid.bare) == f"dave@{DOMAIN}"


async def test_adding_an_existing_user_is_a_conflict(server: Server, clients: Clients) -> None:
    admin = await admin_client(clients)
    await clients.user("alice")

    with pytest.raises(IqError) as error:
        await run(
            admin,
            ADD_USER,
            {"accountjid": f"alice@{DOMAIN}", "password": "other pw", "password-verify": "other pw"},
        )

    assert condition(error) == "conflict"  # XEP-0133 §5


@pytest.mark.parametrize(
    ("fields", "expected", "specific"),
    [
        (
            {"accountjid": "eve@elsewhere.example", "password": "secret!", "password-verify": "secret!"},
            "not-acceptable",
            None,
        ),
        ({"accountjid": DOMAIN, "password": "secret!", "password-verify": "secret!"}, "not-acceptable", None),
        (
            {"accountjid": f"eve@{DOMAIN}/phone", "password": "secret!", "password-verify": "secret!"},
            "not-acceptable",
            None,
        ),
        ({"accountjid": "eve@", "password": "secret!", "password-verify": "secret!"}, "jid-malformed", None),
        (
            {"accountjid": f"eve@{DOMAIN}", "password": "secret!", "password-verify": "Secret!"},
            "not-acceptable",
            None,
        ),
        (
            {"accountjid": f"eve@{DOMAIN}", "password": "short", "password-verify": "short"},
            "not-acceptable",
            None,
        ),
        ({"accountjid": f"eve@{DOMAIN}"}, "bad-request", "bad-payload"),
        ({"password": "secret!", "password-verify": "secret!"}, "bad-request", "bad-payload"),
    ],
)
async def test_bad_add_user_forms_are_refused(
    server: Server, clients: Clients, fields: dict[str, str], expected: str, specific: str | None
) -> None:
    admin = await admin_client(clients)

    with pytest.raises(IqError) as error:
        await run(admin, ADD_USER, fields)

    assert condition(error) == expected
    assert command_condition(error) == specific
    assert await server.storage.accounts.count() == 1  # only the admin


async def test_a_refused_form_can_be_corrected_in_the_same_session(server: Server, clients: Clients) -> None:
    admin = await admin_client(clients)
    started = await execute(admin, ADD_USER)
    session_id = started["command"]["sessionid"]

    with pytest.raises(IqError):
        await complete(admin, ADD_USER, session_id, {"accountjid": f"eve@{DOMAIN}", "password": "secret!"})
    done = await complete(
        admin,
        ADD_USER,
        session_id,
        {"accountjid": f"eve@{DOMAIN}", "password": "secret!", "password-verify": "secret!"},
    )

    assert done["command"]["status"] == "completed"
    assert await server.storage.accounts.exists("eve")


async def test_admin_deletes_bob_while_he_is_online(server: Server, clients: Clients) -> None:
    errors: list[str] = []
    admin = await admin_client(clients)
    await clients.login(
        await clients.user("bob"),
        setup=lambda c: c.add_event_handler("stream_error", lambda e: errors.append(e["condition"])),
    )

    done = await run(admin, DELETE_USER, {"accountjids": [f"bob@{DOMAIN}", f"nobody@{DOMAIN}"]})

    assert done["command"]["status"] == "completed"
    assert done["command"]["notes"] == [("warn", f"Deleted: bob@{DOMAIN}. No such account: nobody@{DOMAIN}")]
    assert not await server.storage.accounts.exists("bob")
    await wait_for(lambda: errors == ["not-authorized"])  # XEP-0133 §4.2: the sessions end
    assert server.sessions.sessions_of(JID.parse(f"bob@{DOMAIN}")) == []


async def test_delete_user_checks_every_jid_before_deleting_any(server: Server, clients: Clients) -> None:
    admin = await admin_client(clients)
    await clients.user("bob")

    with pytest.raises(IqError) as error:
        await run(admin, DELETE_USER, {"accountjids": [f"bob@{DOMAIN}", "carol@elsewhere.example"]})

    assert condition(error) == "not-acceptable"
    assert await server.storage.accounts.exists("bob")


async def test_admin_deleting_themself_gets_the_result_first(server: Server, clients: Clients) -> None:
    errors: list[str] = []
    admin = await clients.login(
        await clients.user("admin"),
        plugins=PLUGINS,
        setup=lambda c: c.add_event_handler("stream_error", lambda e: errors.append(e["condition"])),
    )

    done = await run(admin, DELETE_USER, {"accountjids": [f"admin@{DOMAIN}"]})

    assert done["command"]["notes"] == [("info", f"Deleted: admin@{DOMAIN}")]
    await wait_for(lambda: errors == ["not-authorized"])
    assert not await server.storage.accounts.exists("admin")


# -- counting and listing -------------------------------------------------------------------------------


async def test_get_registered_users_num_answers_at_once(clients: Clients) -> None:
    admin = await admin_client(clients)
    await clients.user("alice")
    await clients.user("bob")

    done = await execute(admin, USERS_NUM)

    assert done["command"]["status"] == "completed"
    assert done["command"]["form"]["type"] == "result"
    assert done["command"]["form"].get_fields()["registeredusersnum"]["value"] == "3"


async def test_get_registered_users_list_honours_max_items(clients: Clients) -> None:
    admin = await admin_client(clients)
    for name in ("zoe", "alice", "bob"):
        await clients.user(name)

    everyone = await run(admin, USERS_LIST, {"max_items": "none"})
    started = await execute(admin, USERS_LIST)
    with pytest.raises(IqError) as error:
        await complete(admin, USERS_LIST, started["command"]["sessionid"], {"max_items": "7"})

    jids = everyone["command"]["form"].get_fields()["registereduserjids"]["value"]
    assert jids == [f"{name}@{DOMAIN}" for name in ("admin", "alice", "bob", "zoe")]
    assert command_condition(error) == "bad-payload"


# -- the XEP-0050 flow ----------------------------------------------------------------------------------


async def test_a_non_admin_is_forbidden(server: Server, clients: Clients) -> None:
    alice = await clients.login(await clients.user("alice"), plugins=PLUGINS)

    for node in (ADD_USER, DELETE_USER, USERS_NUM, USERS_LIST):
        with pytest.raises(IqError) as error:
            await execute(alice, node)
        assert condition(error) == "forbidden"  # XEP-0133 §5, XEP-0050 §4.4


async def test_an_unknown_command_is_item_not_found(clients: Clients) -> None:
    admin = await admin_client(clients)

    with pytest.raises(IqError) as error:
        await execute(admin, f"{ns.ADMIN}#shutdown")

    assert condition(error) == "item-not-found"


async def test_cancel_ends_the_session(server: Server, clients: Clients) -> None:
    admin = await admin_client(clients)
    started = await execute(admin, ADD_USER)
    session_id = started["command"]["sessionid"]

    cancelled = await admin.plugin["xep_0050"].send_command(
        DOMAIN, ADD_USER, action="cancel", sessionid=session_id
    )
    with pytest.raises(IqError) as error:
        await complete(admin, ADD_USER, session_id, {"accountjid": f"eve@{DOMAIN}"})

    assert cancelled["command"]["status"] == "canceled"
    assert condition(error) == "not-allowed"
    assert command_condition(error) == "session-expired"
    assert not await server.storage.accounts.exists("eve")


async def test_a_session_belongs_to_the_resource_that_started_it(clients: Clients) -> None:
    admin_jid = await clients.user("admin")
    admin = await clients.login(admin_jid, plugins=PLUGINS)
    other = await clients.login(admin_jid, plugins=PLUGINS)
    started = await execute(admin, ADD_USER)

    with pytest.raises(IqError) as error:
        await complete(other, ADD_USER, started["command"]["sessionid"], {"accountjid": f"eve@{DOMAIN}"})

    assert command_condition(error) == "bad-sessionid"


async def test_bad_actions_are_refused(clients: Clients) -> None:
    admin = await admin_client(clients)
    started = await execute(admin, ADD_USER)

    with pytest.raises(IqError) as malformed:
        await admin.plugin["xep_0050"].send_command(DOMAIN, ADD_USER, action="explode")
    with pytest.raises(IqError) as prev:
        await admin.plugin["xep_0050"].send_command(
            DOMAIN, ADD_USER, action="prev", sessionid=started["command"]["sessionid"]
        )
    with pytest.raises(IqError) as no_form:
        await admin.plugin["xep_0050"].send_command(
            DOMAIN, ADD_USER, action="complete", sessionid=started["command"]["sessionid"]
        )

    assert command_condition(malformed) == "malformed-action"
    assert command_condition(prev) == "bad-action"
    assert command_condition(no_form) == "bad-payload"


def test_command_sessions_are_bounded_per_requester_and_expire() -> None:
    now = [0.0]
    sessions = CommandSessions(lifetime=600.0, per_requester=2, clock=lambda: now[0])
    admin = JID.parse(f"admin@{DOMAIN}/a")

    first = sessions.start(ADD_USER, admin)
    second = sessions.start(ADD_USER, admin)
    third = sessions.start(ADD_USER, JID.parse(f"admin@{DOMAIN}/b"))  # same account, other resource
    other = sessions.start(ADD_USER, JID.parse(f"root@{DOMAIN}/a"))

    assert sessions.get(first.id) is None  # the oldest made room
    assert sessions.get(second.id) is second
    assert sessions.get(third.id) is third
    now[0] = 599.0
    assert sessions.get(other.id) is other
    now[0] = 600.0
    assert sessions.get(other.id) is None
    assert len(sessions) == 0
    assert len({first.id, second.id, third.id, other.id}) == 4
