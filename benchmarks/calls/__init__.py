"""`python -m benchmarks.calls`: many small calls, pooled or not, and store batches.

A separate runner (like ``benchmarks.adversity``) with the conventions of
``benchmarks.run``: every SCU and SCP its own process, repetitions
round-robin, medians, a table on stdout and a JSON file. See
benchmarks/README.md, "Calls and batches".
"""
