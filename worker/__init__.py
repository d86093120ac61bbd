"""What runs inside each model copy: maps shared memory, calls the model, returns descriptors.

Depends on numpy, pyzmq and ``shm`` only, never on ``gateway`` — model images stay slim.
"""
