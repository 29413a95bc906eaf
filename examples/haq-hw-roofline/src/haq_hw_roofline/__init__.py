"""haq-hw-roofline: a roofline hardware model for haq-plugin (``--hw roofline``)."""

from haq_hw_roofline.roofline import ComputeUnit, RooflineModel

__all__ = ["ComputeUnit", "RooflineModel"]
