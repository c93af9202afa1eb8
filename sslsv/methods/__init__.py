"""Methods register themselves on import: one line per method file."""
from sslsv.methods import simclr  # noqa: F401
from sslsv.methods import supervised  # noqa: F401
