"""Compatibility: ``haq_plugin.plugins`` moved to :mod:`haq_plugin.api.plugins`; this old, documented import path keeps working."""

from haq_plugin.api.plugins import *  # noqa: F401,F403
