"""Methods register themselves on import: one line per method file."""
from sslsv.methods import simclr  # noqa: F401
from sslsv.methods import supervised  # noqa: F401
from sslsv.methods import moco  # noqa: F401
from sslsv.methods import deepcluster  # noqa: F401
from sslsv.methods import swav  # noqa: F401
from sslsv.methods import wmse  # noqa: F401
from sslsv.methods import barlow_twins  # noqa: F401
from sslsv.methods import vicreg  # noqa: F401
from sslsv.methods import byol  # noqa: F401
from sslsv.methods import simsiam  # noqa: F401
from sslsv.methods import dino  # noqa: F401
from sslsv.methods import cpc  # noqa: F401
from sslsv.methods import pseudo_supervised  # noqa: F401
from sslsv.methods import os_kdft  # noqa: F401
from sslsv.methods import rdino  # noqa: F401
from sslsv.methods import sdpn  # noqa: F401
from sslsv.methods import vibcreg  # noqa: F401
