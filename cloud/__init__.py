"""The cloud side: an inference engine (decode, remaining blocks, heads) behind a gRPC server."""
