"""The adversity benchmark: hostile peers against an SCP while a probe peer is served.

`python -m benchmarks.adversity`; see benchmarks/README.md ("Adversity").
"""
