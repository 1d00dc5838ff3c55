"""PEP nodes and their items (XEP-0163 on XEP-0060) on SQL; item row ids order items by publication."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any, get_args

from sqlalchemy import Integer, Row, Select, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nitro.storage.errors import QuotaExceeded, StorageError
from nitro.storage.models import AccessModel, PepItem, PepNode
from nitro.storage.schema import PEP_NAME_MAX_BYTES, accounts, pep_items, pep_nodes
from nitro.storage.sql_base import (
    DELETE_CHUNK,
    Database,
    inserted_id,
    json_strings,
    strings_from_json,
    translated,
    username_key,
)

_ACCESS_MODELS: dict[str, AccessModel] = {model: model for model in get_args(AccessModel)}


def _name_key(name: str, what: str) -> bytes:
    raw = name.encode()
    if not 0 < len(raw) <= PEP_NAME_MAX_BYTES:
        raise ValueError(f"a PEP {what} is 1 to {PEP_NAME_MAX_BYTES} bytes of UTF-8, not {len(raw)}")
    return raw


def _node_row(node: PepNode) -> dict[str, Any]:
    if node.access_model not in _ACCESS_MODELS:
        raise ValueError(f"unknown access model {node.access_model!r}")
    if node.max_items < 1:
        raise ValueError("a node keeps at least one item")
    return {
        "name": _name_key(node.name, "node name"),
        "access_model": node.access_model,
        "max_items": node.max_items,
        "persist_items": node.persist_items,
        "whitelist": json_strings(node.whitelist),
    }


def _node_from_row(row: Row[Any]) -> PepNode:
    access_model = _ACCESS_MODELS.get(row.access_model)
    if access_model is None:
        raise StorageError(f"PEP node with unknown access model {row.access_model!r}")
    return PepNode(
        name=row.name.decode(),
        access_model=access_model,
        max_items=row.max_items,
        persist_items=bool(row.persist_items),
        whitelist=strings_from_json(row.whitelist),
    )


# Built once (see sql_base._ACCOUNT_ID): a statement's construction costs more CPU than SQLite's answer.
_ACCOUNT_NODES = (
    select(pep_nodes).join_from(pep_nodes, accounts).where(accounts.c.username == bindparam("username"))
)
_NODE = _ACCOUNT_NODES.where(pep_nodes.c.name == bindparam("name"))
_NODES = _ACCOUNT_NODES.order_by(pep_nodes.c.name)


def _items_query(by_id: bool, limited: bool) -> Select[Any]:
    """A node's items, newest first: of the ids in `item_ids` only (`by_id`), at most `limit` (`limited`)."""
    query = (
        select(pep_items.c.item_id, pep_items.c.payload, pep_items.c.published_at)
        .join_from(pep_items, pep_nodes)
        .join_from(pep_nodes, accounts)
        .where(accounts.c.username == bindparam("username"), pep_nodes.c.name == bindparam("name"))
        .order_by(pep_items.c.id.desc())
    )
    if by_id:
        query = query.where(pep_items.c.item_id.in_(bindparam("item_ids", expanding=True)))
    if limited:
        query = query.limit(bindparam("limit", type_=Integer))
    return query


_ITEMS = {
    (by_id, limited): _items_query(by_id, limited) for by_id in (False, True) for limited in (False, True)
}


class SqlPepStore:
    """PepStore on SQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @translated
    async def get_node(self, username: str, node: str) -> PepNode | None:
        parameters = {"username": username_key(username), "name": _name_key(node, "node name")}
        row = await self._db.one_or_none(_NODE, parameters)
        return None if row is None else _node_from_row(row)

    @translated
    async def put_node(self, username: str, node: PepNode) -> None:
        values = _node_row(node)
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            node_id = await self._node_id(conn, account_id, values["name"])
            if node_id is None:
                await conn.execute(insert(pep_nodes).values(account_id=account_id, **values))
            else:
                await conn.execute(update(pep_nodes).where(pep_nodes.c.id == node_id).values(**values))

    @translated
    async def delete_node(self, username: str, node: str) -> bool:
        name = _name_key(node, "node name")
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return False
            node_id = await self._node_id(conn, account_id, name)
            if node_id is None:
                return False
            await conn.execute(delete(pep_items).where(pep_items.c.node_id == node_id))
            await conn.execute(delete(pep_nodes).where(pep_nodes.c.id == node_id))
            return True

    @translated
    async def list_nodes(self, username: str) -> list[PepNode]:
        rows = await self._db.rows(_NODES, {"username": username_key(username)})
        return [_node_from_row(row) for row in rows]

    @translated
    async def publish(
        self, username: str, node: str, item: PepItem, *, max_items: int, max_account_items: int | None = None
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if item.published_at.tzinfo is None:
            raise ValueError("published_at must be timezone-aware")
        name = _name_key(node, "node name")
        item_id = _name_key(item.id, "item id")
        async with self._db.writer.begin() as conn:
            account_id = await self._db.existing_account_id(conn, username)
            node_id = await self._node_id(conn, account_id, name)
            if node_id is None:  # XEP-0163 §3: publishing to a node that does not exist creates it
                values = _node_row(PepNode(name=node, max_items=max_items))
                node_id = inserted_id(
                    await conn.execute(insert(pep_nodes).values(account_id=account_id, **values))
                )
            # XEP-0060 §7.1.2: an item published again with the same id replaces the old one.
            await conn.execute(
                delete(pep_items).where(pep_items.c.node_id == node_id, pep_items.c.item_id == item_id)
            )
            await conn.execute(
                insert(pep_items).values(
                    node_id=node_id,
                    item_id=item_id,
                    payload=item.payload,
                    published_at=item.published_at.astimezone(UTC),
                )
            )
            surplus = (
                select(pep_items.c.id)
                .where(pep_items.c.node_id == node_id)
                .order_by(pep_items.c.id.desc())
                .offset(max_items)
            )
            old = list((await conn.execute(surplus)).scalars())
            for start in range(0, len(old), DELETE_CHUNK):
                await conn.execute(
                    delete(pep_items).where(pep_items.c.id.in_(old[start : start + DELETE_CHUNK]))
                )
            if max_account_items is not None:  # counted after replacing and trimming: only growth counts
                count = (
                    select(func.count())
                    .select_from(pep_items)
                    .join(pep_nodes, pep_nodes.c.id == pep_items.c.node_id)
                    .where(pep_nodes.c.account_id == account_id)
                )
                held = int((await conn.execute(count)).scalar_one())
                if held > max_account_items:  # raising rolls the whole publication back
                    raise QuotaExceeded(f"{held} PEP items, at most {max_account_items}")

    @translated
    async def retract(self, username: str, node: str, item_id: str) -> bool:
        name = _name_key(node, "node name")
        item_key = _name_key(item_id, "item id")
        async with self._db.writer.begin() as conn:
            account_id = await self._db.account_id(conn, username, lock=True)
            if account_id is None:
                return False
            node_id = await self._node_id(conn, account_id, name)
            if node_id is None:
                return False
            result = await conn.execute(
                delete(pep_items).where(pep_items.c.node_id == node_id, pep_items.c.item_id == item_key)
            )
            return bool(result.rowcount)

    @translated
    async def items(
        self,
        username: str,
        node: str,
        *,
        max_items: int | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> list[PepItem]:
        if max_items is not None and max_items < 0:
            raise ValueError("max_items must not be negative")
        parameters: dict[str, Any] = {
            "username": username_key(username),
            "name": _name_key(node, "node name"),
        }
        if item_ids is not None:
            parameters["item_ids"] = [_name_key(i, "item id") for i in item_ids]
        if max_items is not None:
            parameters["limit"] = max_items
        query = _ITEMS[item_ids is not None, max_items is not None]
        return [
            PepItem(id=row.item_id.decode(), payload=row.payload, published_at=row.published_at)
            for row in await self._db.rows(query, parameters)
        ]

    @staticmethod
    async def _node_id(conn: AsyncConnection, account_id: int, name: bytes) -> int | None:
        query = select(pep_nodes.c.id).where(pep_nodes.c.account_id == account_id, pep_nodes.c.name == name)
        node_id: int | None = (await conn.execute(query)).scalar_one_or_none()
        return node_id
