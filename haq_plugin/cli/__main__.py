"""``python -m haq_plugin.cli``: the same as the ``haq-plugin`` command."""

from haq_plugin.cli import main

main()
