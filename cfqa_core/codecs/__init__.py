"""Feature codecs. Importing this package registers every built-in codec."""
from cfqa_core.codecs.base import (  # noqa: F401
    CodecInfo,
    EncodedFeature,
    FeatureCodec,
    get_codec,
    register_codec,
    registered_names,
)

# Built-in codecs register themselves on import.
from cfqa_core.codecs import av1, hevc, learned, reference, vvc  # noqa: E402,F401
