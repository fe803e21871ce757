"""Ptychography numerics as pure array functions (numpy or cupy): dark statistics, pre-processing.

No sockets, no documents, no Qt: every function takes arrays and, where it allocates,
an array module ``xp`` (see :mod:`.backend`), so one code path runs on CPU and GPU.
"""
