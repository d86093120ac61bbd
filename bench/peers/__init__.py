"""Code that runs inside the peers' own processes (their venvs): a Triton Python-backend model,
a PyTriton server, an MLServer runtime and a Ray Serve app — each serving the same model
classes as Inferoxy (``bench/suite/models.yaml``'s entrypoints)."""
