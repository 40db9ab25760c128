"""Benchmarks: adicom against pynetdicom and DCMTK on the same work (see README.md)."""
