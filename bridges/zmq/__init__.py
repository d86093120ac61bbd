"""The ZeroMQ bridge: Arrow record batches over a ROUTER socket (see ``bridges.zmq.wire``)."""
