"""Prometheus figures of the plugins, per plugin: connected, held and bounced stanzas, filter answers,
observe events waiting and dropped (the bridge registers this collector on the server's registry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

    from nitro.bridge.hooks import Hooks
    from nitro.bridge.host import PluginHost


class PluginCollector(Collector):
    def __init__(self, hosts: dict[str, PluginHost], hooks: Hooks) -> None:
        self._hosts = hosts
        self._hooks = hooks

    def collect(self) -> Iterator[Metric]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "connected": GaugeMetricFamily(
                "nitro_plugin_connected", "1 while the plugin's link is up", labels=["plugin"]
            ),
            "held": GaugeMetricFamily(
                "nitro_plugin_held", "Stanzas held for a plugin that is down", labels=["plugin"]
            ),
            "bounced": CounterMetricFamily(
                "nitro_plugin_bounced", "Stanzas answered service-unavailable: plugin down", labels=["plugin"]
            ),
            "filtered": CounterMetricFamily(
                "nitro_plugin_filter_answers", "Filter verdicts received", labels=["plugin"]
            ),
            "waiting": GaugeMetricFamily(
                "nitro_plugin_observe_waiting", "Observe events not yet written", labels=["plugin"]
            ),
            "dropped": CounterMetricFamily(
                "nitro_plugin_observe_dropped",
                "Observe events dropped: the plugin's queue was full",
                labels=["plugin"],
            ),
        }
        for host in self._hosts.values():
            hooks = self._hooks.plugins[host.domain]
            label = [host.name]
            families["connected"].add_metric(label, 1.0 if host.connected else 0.0)
            families["held"].add_metric(label, host.held)
            families["bounced"].add_metric(label, host.bounced)
            families["filtered"].add_metric(label, hooks.filtered)
            families["waiting"].add_metric(label, len(hooks.queue))
            families["dropped"].add_metric(label, hooks.dropped)
        yield from families.values()
