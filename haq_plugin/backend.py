"""Compatibility: ``haq_plugin.backend`` moved to :mod:`haq_plugin.api.backend`; this old, documented import path keeps working."""

from haq_plugin.api.backend import *  # noqa: F401,F403
