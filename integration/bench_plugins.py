"""The cost of a plugin hook: messages/s and p50/p99 latency of one chatting pair with no plugin, with
the echo plugin's filter hook (every message waits for its verdict over the link), and with the
compliance plugin (a filter and an acknowledged observe hook writing every message to SQL).

    python -m integration.bench_plugins                    # all three, 5,000 messages each
    python -m integration.bench_plugins --messages 20000 --window 64 --mode inprocess

Each scenario starts its own Nitro from this checkout (plain TCP, SQLite in a temporary directory, no
archive, no client rate limit) with the plugin in `process` mode (or --mode). alice sends to bob with up
to `window` messages in flight; latency is from alice's write to bob's read. It prints and never judges.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from integration.bench_abuse import free_port, logged_in, server

SOURCE = Path(__file__).resolve().parent.parent
SECRET = "bench-secret"


def scenarios(mode: str, directory: Path) -> dict[str, dict[str, dict[str, object]]]:
    base: dict[str, dict[str, object]] = {
        "modules": {"disabled": ["mam"]},
        "limits": {"bytes_per_second": 0, "stanzas_per_second": 0},
    }
    plugins: dict[str, object] = {"port": free_port()}
    # `block` makes echo register its filter hook (no benchmark message has the word: every verdict is pass)
    echo: dict[str, object] = {
        "mode": mode,
        "subdomain": "echo.localhost",
        "secret": SECRET,
        "block": "\u2620",
    }
    compliance: dict[str, object] = {
        "mode": mode,
        "subdomain": "compliance.localhost",
        "secret": SECRET,
        "spool": str(directory / "spool"),
    }
    return {
        "no plugin": base,
        "echo filter hook": {**base, "plugins": plugins, "plugins.echo": echo},
        "compliance plugin": {**base, "plugins": plugins, "plugins.compliance": compliance},
    }


async def wait_for_plugin(port: int, domain: str, timeout: float = 60.0) -> None:
    """A disco#info to the plugin's domain until the plugin answers it (it is connected)."""
    async with logged_in(port, "probe") as probe:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe.writer.write(
                f"<iq type='get' id='p' to='{domain}'>"
                "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>".encode()
            )
            answer = await probe.until(b"</iq>")
            if b"type='result'" in answer or b'type="result"' in answer:
                await asyncio.sleep(1.0)  # its hooks are registered right after it connected
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{domain} never answered")


async def chat(port: int, messages: int, window: int) -> tuple[float, list[float]]:
    async with logged_in(port, "alice") as alice, logged_in(port, "bob") as bob:
        bob.writer.write(b"<presence/>")  # available: a message to the bare JID reaches this resource
        await bob.until(b"<presence")
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        credit = asyncio.Semaphore(window)

        async def send() -> None:
            for n in range(messages):
                await credit.acquire()
                sent_at[n] = time.perf_counter()
                alice.writer.write(
                    f"<message to='bob@localhost' type='chat' id='m{n}'><body>{n}</body></message>".encode()
                )
                if n % 32 == 0:
                    await alice.writer.drain()

        async def receive() -> None:
            while len(latencies) < messages:
                data = await bob.until(b"</message>", timeout=60)
                start = data.rfind(b"<body>")
                n = int(data[start + 6 : data.index(b"</body>", start)])
                latencies.append(time.perf_counter() - sent_at.pop(n))
                credit.release()

        started = time.perf_counter()
        await asyncio.gather(send(), receive())
        return messages / (time.perf_counter() - started), latencies


async def run(name: str, extra: dict[str, dict[str, object]], messages: int, window: int) -> None:
    with server(SOURCE, ("alice", "bob", "probe"), extra) as (port, _pid):
        for domain in ("echo.localhost", "compliance.localhost"):
            if any(domain == table.get("subdomain") for table in extra.values()):
                await wait_for_plugin(port, domain)
        await chat(port, min(500, messages), window)  # warm-up
        rate, latencies = await chat(port, messages, window)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"  {name:<18} {rate:8.0f} msg/s   p50 {cuts[49] * 1000:6.2f} ms   p99 {cuts[98] * 1000:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--window", type=int, default=32, help="messages in flight (default 32)")
    parser.add_argument("--mode", default="process", choices=("process", "inprocess"))
    parser.add_argument("--only", default=None, choices=("none", "echo", "compliance"), help="one scenario")
    args = parser.parse_args()

    print(f"{args.messages} messages alice→bob, window {args.window}, plugins in {args.mode} mode")
    with tempfile.TemporaryDirectory(prefix="nitro-bench-plugins-") as tmp:
        for key, (name, extra) in zip(
            ("none", "echo", "compliance"), scenarios(args.mode, Path(tmp)).items(), strict=True
        ):
            if args.only and args.only != key:
                continue
            asyncio.run(run(name, extra, args.messages, args.window))


if __name__ == "__main__":
    main()
