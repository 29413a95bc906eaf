"""Compatibility: ``haq_plugin.device`` moved to :mod:`haq_plugin.engine.device`; this old, documented import path keeps working."""

from haq_plugin.engine.device import *  # noqa: F401,F403
