"""Compatibility: ``haq_plugin.zoo`` moved to :mod:`haq_plugin.tasks.zoo`; this old, documented import path keeps working."""

from haq_plugin.tasks.zoo import *  # noqa: F401,F403
