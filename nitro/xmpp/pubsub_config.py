"""PubSub node configuration (XEP-0060 §16.4.3), free of I/O: the data forms of publish-options (§7.1.5),
create-and-configure (§8.1.3) and configure (§8.2), read into NodeOptions and written from a PepNode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lxml import etree

from nitro.storage.models import AccessModel, PepNode
from nitro.xmpp import ns
from nitro.xmpp.dataforms import Field, Form, InvalidForm, Option, form_type_field
from nitro.xmpp.errors import StanzaError
from nitro.xmpp.pubsub import NODE_CONFIG

# The access models Nitro enforces (XEP-0060 §4.5); 'roster' and 'authorize' are not offered.
ACCESS_MODELS: tuple[AccessModel, ...] = ("open", "presence", "whitelist")
SEND_LAST = ("never", "on_sub", "on_sub_and_presence")  # XEP-0060 §16.4.3 pubsub#send_last_published_item

# XEP-0060 §16.4.3 options whose value is fixed here: a form may state them, but only with this value.
_FIXED = {
    "pubsub#deliver_notifications": "1",
    "pubsub#deliver_payloads": "1",
    "pubsub#notify_retract": "1",
    "pubsub#notify_delete": "1",
    "pubsub#notify_config": "0",
    "pubsub#notify_sub": "0",
    "pubsub#presence_based_delivery": "0",
    "pubsub#purge_offline": "0",
    "pubsub#notification_type": "headline",
    "pubsub#publish_model": "publishers",
    "pubsub#node_type": "leaf",
}
_BOOLEAN_FIXED = frozenset(name for name, value in _FIXED.items() if value in ("0", "1"))


def read_form(parent: etree._Element | None) -> Form | None:
    """The data form inside `parent` (publish-options, configure), if any; bad-request if broken."""
    x = None if parent is None else parent.find(f"{{{ns.DATA_FORMS}}}x")
    try:
        return None if x is None else Form.from_element(x)
    except InvalidForm as exc:
        raise StanzaError("bad-request", str(exc)) from exc


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """What a publish-options or node_config form asks for; None: not asked."""

    access_model: AccessModel | None = None
    max_items: int | None = None
    persist_items: bool | None = None
    unsupported: tuple[str, ...] = ()  # fields (with their values) this service cannot honour

    def apply(self, node: PepNode) -> PepNode:
        changes: dict[str, object] = {}
        if self.access_model is not None:
            changes["access_model"] = self.access_model
        if self.max_items is not None:
            changes["max_items"] = self.max_items
        if self.persist_items is not None:
            changes["persist_items"] = self.persist_items
        return dataclasses.replace(node, **changes)  # type: ignore[arg-type]  # names are PepNode fields

    def unmet(self, node: PepNode) -> list[str]:
        """XEP-0060 §7.1.5: the options the existing node does not match (empty: precondition met)."""
        unmet = list(self.unsupported)
        if self.access_model is not None and self.access_model != node.access_model:
            unmet.append(f"pubsub#access_model={self.access_model}")
        if self.max_items is not None and self.max_items != node.max_items:
            unmet.append(f"pubsub#max_items={self.max_items}")
        if self.persist_items is not None and self.persist_items != node.persist_items:
            unmet.append(f"pubsub#persist_items={int(self.persist_items)}")
        return unmet


def parse_options(form: Form, form_type: str, *, max_items_cap: int) -> NodeOptions:
    """Read a submitted form of `form_type`; bad-request for values that are not values of the field.

    pubsub#max_items 'max' (XEP-0060 §16.4.3) and numbers above `max_items_cap` both mean the cap.
    pubsub#send_last_published_item is accepted with any defined value: the last item is always sent on
    presence (XEP-0163 §4.3.4), which for a multi-item node like bookmarks (XEP-0402) repeats one item.
    """
    if form.type != "submit":
        raise StanzaError("bad-request", f"a {form_type} form must be of type 'submit'")
    if form.form_type not in (None, form_type):
        raise StanzaError("bad-request", f"FORM_TYPE must be {form_type}")
    access_model: AccessModel | None = None
    max_items: int | None = None
    persist_items: bool | None = None
    unsupported_fields: list[str] = []
    for field in form.fields:
        var, value = field.var, field.value
        if var in (None, "FORM_TYPE"):
            continue
        if value is None:
            raise StanzaError("bad-request", f"field {var} has no value")
        if var == "pubsub#access_model":
            access_model = _access_model(value)
            if access_model is None:
                unsupported_fields.append(f"{var}={value}")
        elif var == "pubsub#max_items":
            max_items = _max_items(value, max_items_cap)
        elif var == "pubsub#persist_items":
            persist_items = _boolean(var, value)
        elif var == "pubsub#send_last_published_item":
            if value not in SEND_LAST:
                raise StanzaError("bad-request", f"{var} is one of {', '.join(SEND_LAST)}")
        elif var in _FIXED:
            given = ("1" if _boolean(var, value) else "0") if var in _BOOLEAN_FIXED else value
            if given != _FIXED[var]:
                unsupported_fields.append(f"{var}={value}")
        else:
            unsupported_fields.append(var)
    return NodeOptions(access_model, max_items, persist_items, tuple(unsupported_fields))


def _access_model(value: str) -> AccessModel | None:
    for model in ACCESS_MODELS:
        if model == value:
            return model
    if value in ("roster", "authorize"):
        return None  # defined by XEP-0060 §4.5, not offered here
    raise StanzaError("bad-request", f"unknown access model {value!r} (XEP-0060 §4.5)")


def _max_items(value: str, cap: int) -> int:
    if value == "max":
        return cap
    if not value.isdigit() or int(value) < 1:
        raise StanzaError("bad-request", "pubsub#max_items is a positive integer or 'max'")
    return min(int(value), cap)


def _boolean(var: str, value: str) -> bool:
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise StanzaError("bad-request", f"{var} is a boolean (XEP-0004 §3.3)")


def config_form(node: PepNode, form_type: str = NODE_CONFIG) -> Form:
    """The node's configuration (XEP-0060 §8.2.1) or the defaults (§8.3), as a form to fill in."""
    fields = [
        form_type_field(form_type),
        Field(
            "pubsub#access_model",
            "list-single",
            "Who may retrieve items and receive notifications",
            values=(node.access_model,),
            options=tuple(Option(model) for model in ACCESS_MODELS),
        ),
        Field("pubsub#max_items", "text-single", "Items to keep", values=(str(node.max_items),)),
        Field("pubsub#persist_items", "boolean", "Store items", values=("1" if node.persist_items else "0",)),
        Field(
            "pubsub#send_last_published_item",
            "list-single",
            "When to send the last published item",
            values=("on_sub_and_presence",),
            options=tuple(Option(value) for value in SEND_LAST),
        ),
    ]
    fields.extend(
        Field(var, "boolean" if var in _BOOLEAN_FIXED else "text-single", values=(value,))
        for var, value in _FIXED.items()
    )
    return Form("form", tuple(fields))
