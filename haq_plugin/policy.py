"""Compatibility: ``haq_plugin.policy`` moved to :mod:`haq_plugin.api.policy`; this old, documented import path keeps working."""

from haq_plugin.api.policy import *  # noqa: F401,F403
