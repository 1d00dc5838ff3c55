"""The RFC 3921 `<session/>` IQ: advertised as optional (RFC 6121 Appendix E) and answered with a result."""

from nitro.core.module import Module
from nitro.core.router import StanzaEvent
from nitro.xmpp import ns
from nitro.xmpp.stanza import iq_result


def load(module: Module) -> None:
    async def on_session(event: StanzaEvent) -> bool:
        await event.reply(iq_result(event.stanza))
        return True

    for to_type in ("host", "self"):
        module.hook(f"iq-set/{to_type}/{ns.SESSION}:session", on_session)
