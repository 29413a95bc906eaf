"""haq-backend-simplefq: a fake-quantizing backend for haq-plugin (``--backend simple-fq``)."""

from haq_backend_simplefq.backend import SimpleFQBackend

__all__ = ["SimpleFQBackend"]
