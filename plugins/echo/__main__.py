"""`python -m plugins.echo --config FILE [--name NAME]`."""

from nitro.sdk.cli import run
from plugins.echo import main, plugin

run(main, plugin.name)
