"""`python -m plugins.muc --config FILE [--name NAME] [--core HOST:PORT]`."""

from nitro.sdk.cli import run
from plugins.muc import main

run(main, "muc")
