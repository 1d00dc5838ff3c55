"""The plugins shipped with Nitro, one package each, run as `python -m plugins.NAME --config FILE`."""
