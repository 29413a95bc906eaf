"""Compatibility: ``haq_plugin.options`` moved to :mod:`haq_plugin.api.options`; this old, documented import path keeps working."""

from haq_plugin.api.options import *  # noqa: F401,F403
