"""Compatibility: ``haq_plugin.bits`` moved to :mod:`haq_plugin.api.bits`; this old, documented import path keeps working."""

from haq_plugin.api.bits import *  # noqa: F401,F403
