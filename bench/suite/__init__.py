"""The benchmark suite behind ``inferoxy bench``: Inferoxy beside Triton, PyTriton, MLServer
and Ray Serve, on the same machine in the same run.

Pure parts (no I/O): ``scenario`` (the declarative files and their validation), ``ideal``
(the no-server upper bound), ``report`` (rows, ratios, tables). The rest drives real
processes: ``procs`` (owned subprocesses, CPU accounting, pinning), ``loadgen`` (wrk,
perf_analyzer, the gRPC and ZeroMQ clients), ``systems`` (one adapter per server),
``plots`` and ``runner`` (the command).
"""
