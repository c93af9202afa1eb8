"""Encoders register themselves on import: one line per encoder file."""
from sslsv.encoders import pooling  # noqa: F401
from sslsv.encoders import fast_resnet34  # noqa: F401
