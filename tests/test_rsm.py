"""Result Set Management (XEP-0059) as pure parsing and building: byte strings in, values out."""

from __future__ import annotations

import pytest
from lxml import etree

from nitro.xmpp.rsm import RSM, InvalidSet, PageInfo, PageRequest, find_set, parse_set


def xml(text: str) -> etree._Element:
    return etree.fromstring(text)


def rsm_set(inner: str) -> etree._Element:
    return xml(f"<set xmlns='{RSM}'>{inner}</set>")


def test_a_first_page_of_ten() -> None:
    assert parse_set(rsm_set("<max>10</max>")) == PageRequest(max=10)


def test_the_next_page_after_a_uid() -> None:
    request = parse_set(rsm_set("<max>10</max><after>09af3-cc343-b409f</after>"))
    assert request == PageRequest(max=10, after="09af3-cc343-b409f")
    assert not request.backward


def test_the_previous_page_before_a_uid_goes_backward() -> None:
    request = parse_set(rsm_set("<max>10</max><before>28482-98726-73623</before>"))
    assert request.before == "28482-98726-73623"
    assert request.backward


def test_an_empty_before_asks_for_the_last_page() -> None:
    # XEP-0059 §2.5: <before/> with no content requests the last page.
    for text in ("<before/>", "<before></before>", "<before> </before>"):
        request = parse_set(rsm_set(f"<max>5</max>{text}"))
        assert request.before == ""
        assert request.backward


def test_an_index_and_a_zero_max() -> None:
    assert parse_set(rsm_set("<max>0</max>")) == PageRequest(max=0)
    assert parse_set(rsm_set("<max>10</max><index>370</index>")) == PageRequest(max=10, index=370)


def test_a_huge_max_is_a_number_not_an_error() -> None:
    assert parse_set(rsm_set("<max>1000000000</max>")).max == 10**9


def test_nothing_asked_is_all_none() -> None:
    assert parse_set(rsm_set("")) == PageRequest()


@pytest.mark.parametrize(
    "inner",
    [
        "<max>-1</max>",
        "<max>ten</max>",
        "<max>+1</max>",
        "<max>1.5</max>",
        "<max></max>",
        "<max>\u0661\u0660</max>",  # Arabic-Indic "10": str.isdigit() says yes, xs:int says no
        "<max>1</max><max>2</max>",
        "<after/>",
        "<after>a</after><after>b</after>",
        "<before>a</before><before>b</before>",
        "<index>-3</index>",
    ],
)
def test_malformed_requests_are_refused(inner: str) -> None:
    with pytest.raises(InvalidSet):
        parse_set(rsm_set(inner))


def test_a_set_in_another_namespace_is_not_rsm() -> None:
    with pytest.raises(InvalidSet):
        parse_set(xml("<set xmlns='urn:example'><max>1</max></set>"))


def test_find_set_among_the_children_of_a_query() -> None:
    query = xml(
        f"<query xmlns='urn:xmpp:mam:2'><x xmlns='jabber:x:data'/>"
        f"<set xmlns='{RSM}'><max>3</max></set></query>"
    )
    assert find_set(query) == PageRequest(max=3)
    assert find_set(xml("<query xmlns='urn:xmpp:mam:2'/>")) is None
    twice = xml(f"<query xmlns='urn:xmpp:mam:2'><set xmlns='{RSM}'/><set xmlns='{RSM}'/></query>")
    with pytest.raises(InvalidSet):
        find_set(twice)


def test_a_returned_page_names_first_with_index_last_and_count() -> None:
    answer = PageInfo(first="a1", first_index=20, last="a9", count=800).to_element()
    assert etree.tostring(answer) == (
        b'<set xmlns="http://jabber.org/protocol/rsm"><first index="20">a1</first>'
        b"<last>a9</last><count>800</count></set>"
    )


def test_an_empty_page_has_only_the_count() -> None:
    # XEP-0059 §2.2: no <first/> or <last/> when no items are returned.
    answer = PageInfo(count=0).to_element()
    assert etree.tostring(answer) == b'<set xmlns="http://jabber.org/protocol/rsm"><count>0</count></set>'


def test_an_unknown_count_and_index_are_left_out() -> None:
    answer = PageInfo(first="a1", last="a2").to_element()
    assert answer.find(f"{{{RSM}}}count") is None
    first = answer.find(f"{{{RSM}}}first")
    assert first is not None
    assert first.get("index") is None
