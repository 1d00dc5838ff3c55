"""Data Forms (XEP-0004) as typed values: build a form to send, parse a submitted one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from lxml import etree

from nitro.xmpp import ns
from nitro.xmpp.stanza import child, element

FormType = Literal["form", "submit", "cancel", "result"]
FieldType = Literal[
    "boolean",
    "fixed",
    "hidden",
    "jid-multi",
    "jid-single",
    "list-multi",
    "list-single",
    "text-multi",
    "text-private",
    "text-single",
]

_FORM_TYPES: frozenset[str] = frozenset(get_args(FormType))
_FIELD_TYPES: frozenset[str] = frozenset(get_args(FieldType))
_X = f"{{{ns.DATA_FORMS}}}"


class InvalidForm(ValueError):
    """A `<x xmlns='jabber:x:data'/>` that breaks XEP-0004 §3 (unknown type, bad boolean, ...)."""


@dataclass(frozen=True, slots=True)
class Option:
    """One choice of a list field (XEP-0004 §3.2)."""

    value: str
    label: str | None = None


@dataclass(frozen=True, slots=True)
class Field:
    """One `<field/>`; `type` None means text-single for forms, unknown for submissions (§3.2)."""

    var: str | None
    type: FieldType | None = None
    label: str | None = None
    values: tuple[str, ...] = ()
    required: bool = False
    desc: str | None = None
    options: tuple[Option, ...] = ()

    @property
    def value(self) -> str | None:
        """The first value, or None when the field has none."""
        return self.values[0] if self.values else None


@dataclass(frozen=True, slots=True)
class Form:
    """A whole data form; `FORM_TYPE` (XEP-0068) is an ordinary hidden field in `fields`."""

    type: FormType
    fields: tuple[Field, ...] = ()
    title: str | None = None
    instructions: tuple[str, ...] = ()

    @property
    def form_type(self) -> str | None:
        """The value of the hidden FORM_TYPE field (XEP-0068 §3), if any."""
        return self.value("FORM_TYPE")

    def field(self, var: str) -> Field | None:
        return next((f for f in self.fields if f.var == var), None)

    def value(self, var: str) -> str | None:
        """The first value of field `var`; None if the field is absent or empty."""
        found = self.field(var)
        return found.value if found is not None else None

    def values(self, var: str) -> tuple[str, ...]:
        found = self.field(var)
        return found.values if found is not None else ()

    def to_element(self) -> etree._Element:
        x = element(ns.DATA_FORMS, "x", type=self.type)
        if self.title is not None:
            child(x, ns.DATA_FORMS, "title", self.title)
        for line in self.instructions:
            child(x, ns.DATA_FORMS, "instructions", line)
        for item in self.fields:
            node = child(x, ns.DATA_FORMS, "field")
            if item.var is not None:
                node.set("var", item.var)
            if item.type is not None:
                node.set("type", item.type)
            if item.label is not None:
                node.set("label", item.label)
            if item.desc is not None:
                child(node, ns.DATA_FORMS, "desc", item.desc)
            if item.required:
                child(node, ns.DATA_FORMS, "required")
            for value in item.values:
                child(node, ns.DATA_FORMS, "value", value)
            for option in item.options:
                option_node = child(node, ns.DATA_FORMS, "option")
                if option.label is not None:
                    option_node.set("label", option.label)
                child(option_node, ns.DATA_FORMS, "value", option.value)
        return x

    @classmethod
    def from_element(cls, x: etree._Element) -> Form:
        """Parse `<x xmlns='jabber:x:data'/>`; raises InvalidForm when it breaks XEP-0004 §3."""
        if x.tag != f"{_X}x":
            raise InvalidForm("not a jabber:x:data <x/> element")
        form_type = x.get("type")
        if form_type not in _FORM_TYPES:
            raise InvalidForm(f"form type {form_type!r} is not form, submit, cancel or result")
        fields = tuple(_parse_field(node) for node in x.iterchildren(f"{_X}field"))
        return cls(
            type=form_type,  # type: ignore[arg-type]  # checked against _FORM_TYPES above
            fields=fields,
            title=x.findtext(f"{_X}title"),
            instructions=tuple(node.text or "" for node in x.iterchildren(f"{_X}instructions")),
        )


def _parse_field(node: etree._Element) -> Field:
    field_type = node.get("type")
    if field_type is not None and field_type not in _FIELD_TYPES:
        raise InvalidForm(f"field type {field_type!r} is not defined by XEP-0004 §3.3")
    values = tuple(value.text or "" for value in node.iterchildren(f"{_X}value"))
    if len(values) > 1 and field_type not in (None, "jid-multi", "list-multi", "text-multi", "hidden"):
        raise InvalidForm(f"field {node.get('var')!r} of type {field_type} has more than one value")
    options = tuple(
        Option(option.findtext(f"{_X}value") or "", option.get("label"))
        for option in node.iterchildren(f"{_X}option")
    )
    return Field(
        var=node.get("var"),
        type=field_type,  # type: ignore[arg-type]  # checked against _FIELD_TYPES above
        label=node.get("label"),
        values=values,
        required=node.find(f"{_X}required") is not None,
        desc=node.findtext(f"{_X}desc"),
        options=options,
    )


def find_form(parent: etree._Element, form_type: str | None = None) -> Form | None:
    """The first data form child of `parent` (with FORM_TYPE `form_type` if given); InvalidForm if broken."""
    for x in parent.iterchildren(f"{_X}x"):
        form = Form.from_element(x)
        if form_type is None or form.form_type == form_type:
            return form
    return None


def form_type_field(value: str) -> Field:
    """The hidden FORM_TYPE field that names a form's field vocabulary (XEP-0068 §3)."""
    return Field("FORM_TYPE", "hidden", values=(value,))
