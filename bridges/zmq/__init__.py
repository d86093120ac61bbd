"""The ZeroMQ bridge: Arrow record batches over a ROUTER socket; the format is
``inferoxy.protocol``."""
