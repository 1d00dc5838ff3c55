"""`python -m plugins.compliance --config FILE [--name NAME] [search|export|purge …]`."""

from plugins.compliance.cli import main

main()
