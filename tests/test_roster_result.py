"""roster_result.roster_query: the `<query/>` parsed from text is the tree roster.item_element builds (the
same bytes once serialised), whatever names and groups hold; text XML does not allow raises."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.modules.roster import item_element
from nitro.modules.roster_result import roster_query
from nitro.storage.models import RosterItem
from nitro.xmpp import ns
from nitro.xmpp.stanza import element
from nitro.xmpp.xmlwrite import serialize

_ODD = "a\"b<c>d&e'f\tg\nh\ri ü ☃ ]]> &amp;"

_ITEMS = [
    RosterItem("bob@localhost", subscription="both"),
    RosterItem("carol@localhost", name="Carol", subscription="to", groups=("Friends", "Work")),
    RosterItem("dave@localhost/phone", name=_ODD, subscription="none", ask=True, groups=(_ODD, "Friends")),
    RosterItem("eve@localhost", subscription="from", approved=True, pending_in=True),
    RosterItem("stranger@localhost", pending_in=True, in_roster=False),  # a request only: not listed
    RosterItem("x@localhost", name="", subscription="none", ask=True, approved=True, groups=("g",)),
]


def _built(version: int, items: list[RosterItem]) -> etree._Element:
    query = element(ns.ROSTER, "query", ver=str(version))
    for item in items:
        if item.in_roster:
            item_element(item, item.jid, query)
    return query


@pytest.mark.parametrize("count", [0, 1, len(_ITEMS), 250])  # 250: more than one chunk (pace.EVERY)
async def test_the_parsed_query_is_the_built_one(count: int) -> None:
    items = [_ITEMS[index % len(_ITEMS)] for index in range(count)]
    parsed = await roster_query(7, items)
    assert serialize(parsed) == serialize(_built(7, items))
    assert [(node.tag, dict(node.attrib)) for node in parsed.iter()] == [
        (node.tag, dict(node.attrib)) for node in _built(7, items).iter()
    ]


async def test_text_xml_does_not_allow_raises() -> None:
    with pytest.raises(etree.XMLSyntaxError):
        await roster_query(1, [RosterItem("bob@localhost", name="bell\x07")])
