"""pynetdicom's own Q/R SCP app, ``python -m pynetdicom qrscp``, as the benchmarks run it.

    python -m benchmarks.sides.pynetdicom_qrscp -c qrscp.ini

Runs the app's ``main`` unchanged. The only reason for this wrapper: with
``BENCH_PYNETDICOM_NODELAY=1`` (the runner's --pynetdicom-nodelay) it first
sets TCP_NODELAY on every socket pynetdicom wraps, as the pynetdicom side
does; without it, this is exactly ``python -m pynetdicom qrscp``.
"""

from __future__ import annotations

import sys

from benchmarks.sides import pynetdicom_side  # noqa: F401  (applies the optional nodelay patch)


def main() -> None:
    from pynetdicom.apps.qrscp import qrscp

    qrscp.main(sys.argv[1:])  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
