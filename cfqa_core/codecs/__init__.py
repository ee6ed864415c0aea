"""Feature codecs. Importing this package registers every built-in codec."""
from cfqa_core.codecs.base import (  # noqa: F401
    CODECS,
    CodecInfo,
    EncodedFeature,
    FeatureCodec,
    get_codec,
    register_codec,
    registered_names,
)

# isort: split
# Built-in codecs register themselves on import (after the registry they fill).
from cfqa_core.codecs import av1, hevc, learned, reference, vvc  # noqa: E402,F401
