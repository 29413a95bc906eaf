"""Compatibility: ``haq_plugin.costs`` moved to :mod:`haq_plugin.engine.costs`; this old, documented import path keeps working."""

from haq_plugin.engine.costs import *  # noqa: F401,F403
