"""XEP-0227 (Portable Import/Export Format) names, and SCRAM credentials in the forms servers write.

Credentials are read in every form found in the wild and written in the one Prosody 0.12, Tigase and
XEP-0227 1.1 agree on: `<scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>` with
base64 `salt`, `server-key`, `stored-key` and a decimal `iter-count`. Also read: ejabberd's password
attribute `scram:[sha256:]StoredKey,ServerKey,Salt,IterationCount` (base64 parts), Prosody 0.11's
extended attributes (hex keys, raw salt), and a plain `password` attribute (derived here).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

from lxml import etree

from nitro.xmpp.sasl.credentials import HASHLIB_NAMES, HashName, ScramCredential
from nitro.xmpp.stanza import element

PIE = "urn:xmpp:pie:0"
PIE_OLD = "http://www.xmpp.org/extensions/xep-0227.html#ns"  # ejabberd before XEP-0227 1.0
PIE_NAMESPACES = (PIE, PIE_OLD)
SCRAM = f"{PIE}#scram"
MAM_ARCHIVE = f"{PIE}#mam"  # Prosody's archive element (mod_storage_xep0227)
MAM = "urn:xmpp:mam:2"
FORWARD = "urn:xmpp:forward:0"
XINCLUDE = "http://www.w3.org/2001/XInclude"
PROSODY_EXTENDED = "http://prosody.im/protocol/extended-xep0227"
VCARD = "vcard-temp"
PRIVATE = "jabber:iq:private"
BLOCKING = "urn:xmpp:blocking"

_MECHANISMS: dict[str, HashName] = {f"SCRAM-{name}": name for name in HASHLIB_NAMES}
_EJABBERD_HASHES: dict[str, HashName] = {"": "SHA-1", "sha256:": "SHA-256"}


class BadCredentials(ValueError):
    """Credentials that are present but cannot be used; the message says which and why."""


def parser() -> etree.XMLParser:
    """No DTD, no entities, no network: an export file is data, never instructions."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)


def scram_element(credential: ScramCredential) -> etree._Element:
    node = element(SCRAM, "scram-credentials", mechanism=f"SCRAM-{credential.hash_name}")
    for name, text in (
        ("iter-count", str(credential.iterations)),
        ("salt", base64.b64encode(credential.salt).decode()),
        ("server-key", base64.b64encode(credential.server_key).decode()),
        ("stored-key", base64.b64encode(credential.stored_key).decode()),
    ):
        etree.SubElement(node, f"{{{SCRAM}}}{name}").text = text
    return node


def read_credentials(user: etree._Element) -> dict[HashName, ScramCredential]:
    """Every SCRAM credential the `<user/>` element carries, whatever the exporter; BadCredentials if
    one is malformed. A plain password is not handled here (see `plain_password`)."""
    found: dict[HashName, ScramCredential] = {}
    for credential in _scram_elements(user):
        found.setdefault(credential.hash_name, credential)
    password = user.get("password") or ""
    if password.startswith("scram:"):
        credential = _ejabberd(password)
        found.setdefault(credential.hash_name, credential)
    prosody = {key: user.get(f"{{{PROSODY_EXTENDED}}}{key}") for key in ("salt", "iteration_count")}
    prosody |= {key: user.get(f"{{{PROSODY_EXTENDED}}}{key}") for key in ("stored_key", "server_key")}
    if all(prosody.values()):
        found.setdefault("SHA-1", _prosody_attributes(prosody))
    return found


def plain_password(user: etree._Element) -> str | None:
    password = user.get("password")
    return password if password and not password.startswith("scram:") else None


def _scram_elements(user: etree._Element) -> Iterator[ScramCredential]:
    for node in user.iterchildren(f"{{{SCRAM}}}scram-credentials"):
        mechanism = node.get("mechanism", "")
        hash_name = _MECHANISMS.get(mechanism)
        if hash_name is None:
            continue  # SCRAM-SHA-512 and others: not a hash Nitro offers
        try:
            yield ScramCredential(
                hash_name,
                _b64(node.findtext(f"{{{SCRAM}}}salt")),
                int(node.findtext(f"{{{SCRAM}}}iter-count") or ""),
                _b64(node.findtext(f"{{{SCRAM}}}stored-key")),
                _b64(node.findtext(f"{{{SCRAM}}}server-key")),
            )
        except ValueError as exc:
            raise BadCredentials(f"{mechanism} credentials: {exc}") from exc


def _ejabberd(password: str) -> ScramCredential:
    rest = password.removeprefix("scram:")
    prefix = "sha256:" if rest.startswith("sha256:") else ""
    if rest.startswith("sha512:"):
        raise BadCredentials("SCRAM-SHA-512 credentials only: not a hash Nitro offers")
    try:
        stored, server, salt, iterations = rest.removeprefix(prefix).split(",")
        return ScramCredential(
            _EJABBERD_HASHES[prefix], _b64(salt), int(iterations), _b64(stored), _b64(server)
        )
    except ValueError as exc:
        raise BadCredentials(f"ejabberd scram password: {exc}") from exc


def _prosody_attributes(values: dict[str, str | None]) -> ScramCredential:
    try:
        return ScramCredential(
            "SHA-1",
            (values["salt"] or "").encode(),
            int(values["iteration_count"] or ""),
            bytes.fromhex(values["stored_key"] or ""),
            bytes.fromhex(values["server_key"] or ""),
        )
    except ValueError as exc:
        raise BadCredentials(f"Prosody hashed password attributes: {exc}") from exc


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode((text or "").strip(), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {text!r}") from exc


def pie_children(parent: etree._Element, name: str) -> Iterator[etree._Element]:
    """Children named `name` in either XEP-0227 namespace, or none (Prosody writes some unqualified)."""
    for candidate in parent:
        if not isinstance(candidate.tag, str):
            continue
        qname = etree.QName(candidate)
        if qname.localname == name and qname.namespace in (*PIE_NAMESPACES, None, "jabber:client"):
            yield candidate
