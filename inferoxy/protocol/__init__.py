"""Wire formats shared by the Python client (``inferoxy.client``) and the bridges, I/O-free.

Nothing here imports the gateway: the client installs without it, and a bridge maps
``FrameError`` to its own typed error at its edge. The formats are specified in
``docs/protocols/``.
"""
