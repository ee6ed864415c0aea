"""Feature codecs. Importing this package registers every built-in codec."""
from cfqa_core.codecs.base import (  # noqa: F401
    CodecInfo,
    EncodedFeature,
    FeatureCodec,
    get_codec,
    register_codec,
    registered_names,
)
