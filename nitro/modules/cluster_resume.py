"""XEP-0198 resumption at any member of the cluster (nitro/ops/resume_anywhere.py): a `<resume/>` for a
session another node or worker holds pulls it here. Idle without `[cluster] node`."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from nitro.core.module import Module
from nitro.ops.resume_anywhere import ResumeAnywhere

if TYPE_CHECKING:
    from nitro.server import Server


def load(module: Module) -> None:
    server = cast("Server", module.server)  # modules load inside the server's cluster scope
    cluster = getattr(server, "cluster", None)
    if cluster is None:
        return
    module.on_unload(ResumeAnywhere(server, cluster).install())
