"""The Inferoxy Python client: one idiom over REST, gRPC and ZeroMQ.

    import numpy as np
    from inferoxy.client import AsyncClient, Client, InferenceError

    with Client.zmq("tcp://127.0.0.1:7787") as client:   # or Client.http("127.0.0.1:8000"),
        out = client.infer("stub", {"IMAGE": images})    #    Client.grpc("127.0.0.1:8001")
        out["IMAGE"]                                     # one row per input row
        everything = client.infer_many("stub", {"IMAGE": ten_thousand_images})

    async with AsyncClient.zmq("tcp://127.0.0.1:7787") as client:   # Trio
        out = await client.infer("stub", {"IMAGE": images})

Inputs map each model input's name to a numpy array whose first dimension is the batch (the
rows); the answer maps every output's name to an array with one row per input row. ``version``
picks a model version, ``timeout`` (seconds) is the server-side deadline, ``parameters``
reach the model. A failure raises ``InferenceError`` with an HTTP-like ``code`` (400 bad
input, 404 unknown model, 503 overloaded, 504 deadline, 500 the model failed; gRPC status
codes are mapped to these).

REST and gRPC go through ``tritonclient`` (binary tensor data; ``pip install
tritonclient[http,grpc]``); ZeroMQ speaks Arrow batches (``inferoxy.protocol``). ``infer_many``
splits many rows into requests of ``rows_per_request`` and, on ZeroMQ and in ``AsyncClient``,
keeps ``window`` of them in flight; the gateway further splits each request into its model's
batches. Keep ``window`` at most 16 on ZeroMQ: the gateway queues that many unread replies
per connection. ``AsyncClient`` drives its ZeroMQ socket natively from Trio (one I/O task);
for REST and gRPC it runs the blocking calls in worker threads (one tritonclient per thread,
at most ``threads`` at a time).

Arrays that come back over ZeroMQ from ``infer`` are read-only views of the reply.
"""

from inferoxy.client.blocking import Client
from inferoxy.client.errors import InferenceError
from inferoxy.client.trio_client import AsyncClient

__all__ = ["AsyncClient", "Client", "InferenceError"]
