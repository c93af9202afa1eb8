"""Encoders register themselves on import: one line per encoder file."""
from sslsv.encoders import pooling  # noqa: F401
from sslsv.encoders import fast_resnet34  # noqa: F401
from sslsv.encoders import ecapa_tdnn  # noqa: F401
from sslsv.encoders import resnet_multiscale  # noqa: F401
from sslsv.encoders import redimnet  # noqa: F401
from sslsv.encoders import sv_mixer  # noqa: F401
from sslsv.encoders import ssrfnet  # noqa: F401
from sslsv.encoders import layerwise  # noqa: F401
from sslsv.encoders import pretrained_speech  # noqa: F401
