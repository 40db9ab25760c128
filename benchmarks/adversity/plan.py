"""Which rows run: a baseline per SCP, then every attack that applies to it, with its settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from benchmarks.adversity.attacks import ATTACKS

SCP_ORDER = ("adicom", "dcmtk", "pynetdicom")
BASELINE = "baseline"
#: The attacks in the order they run (and the table shows them).
ATTACK_ORDER = (
    "deflate-bomb",
    "big-identifier",
    "echo-with-dataset",
    "unterminated-command",
    "tiny-pdvs",
    "tiny-pdvs-4",
    "silent-500",
    "dribble-rq-500",
    "idle-assoc-500",
    "dribble-store",
    "emfile-3000",
    "sigterm-sta2",
)
assert set(ATTACK_ORDER) == set(ATTACKS)
#: The SCP's open-file limit in emfile-3000 (soft and hard, set before exec).
EMFILE_LIMIT = 1024
#: adicom's limits per address (64 connections) make one attacking address cheap to
#: hold off; these attacks run against it a second time with the same slots spread over
#: SPREAD_ADDRESSES addresses (127.0.0.2 to 127.0.0.51), so that its global limits
#: (--max-pending 128, --max-associations 500, the file limit) are what is tested.
SPREAD_ATTACKS = ("idle-assoc-500", "emfile-3000")
SPREAD_ADDRESSES = 50
#: Seconds the attacker of sigterm-sta2 holds on beyond the window: the SCP
#: gets its SIGTERM while the connections are still open.
HOLD_EXTRA = 30.0


@dataclass(frozen=True)
class Row:
    scp: str
    attack: str | None  # None: the baseline, no attacker
    #: Options added to the SCP's command line for this row.
    scp_args: tuple[str, ...] = ()
    #: RLIMIT_NOFILE (soft = hard) of the SCP.
    nofile: int | None = None
    #: SIGTERM while the attacker still holds its connections.
    sigterm_under_attack: bool = False
    #: Overrides of the attack's Params (slots, size, reconnect_delay, interval).
    params: dict[str, float] = field(default_factory=dict)
    note: str = ""
    #: What differs in this row, for its label (default: the SCP's extra options).
    variant: str = ""

    @property
    def name(self) -> str:
        return self.attack or BASELINE

    @property
    def label(self) -> str:
        """The attack and what differs in this row's SCP."""
        extra = self.variant or " ".join(self.scp_args)
        return f"{self.name} ({extra})" if extra else self.name


#: Attacks that do not apply to an SCP, and why.
NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("dcmtk", "big-identifier"): "storescp offers no C-FIND",
    ("pynetdicom", "big-identifier"): "pynetdicom's storescp offers no C-FIND",
}


def _spread(row: Row) -> Row:
    """The same row with the attack's slots spread over SPREAD_ADDRESSES addresses."""
    variant = f"from {SPREAD_ADDRESSES} addresses"
    return replace(row, params={"addresses": SPREAD_ADDRESSES, **row.params}, variant=variant)


def _rows_for(scp: str, attack: str, params: dict[str, float]) -> list[Row]:
    if attack == "emfile-3000":
        note = f"SCP's RLIMIT_NOFILE {EMFILE_LIMIT}"
        return [Row(scp, attack, nofile=EMFILE_LIMIT, params=params, note=note)]
    if attack == "sigterm-sta2":
        return [Row(scp, attack, sigterm_under_attack=True, params=params)]
    if attack in ("tiny-pdvs", "tiny-pdvs-4", "dribble-store") and scp == "dcmtk":
        note = "2-byte PDVs: storescp aborts a PDV of odd length at once (0006:020d)"
        params = {"pdv_bytes": 2, **params}
        return [Row(scp, attack, params=params, note=note, variant="2-byte PDVs")]
    if attack == "deflate-bomb" and scp == "dcmtk":
        note = "storescp +xd: accepts deflated explicit VR LE (as packaged it does not)"
        return [Row(scp, attack, scp_args=("+xd",), params=params, note=note)]
    if attack == "dribble-store" and scp == "adicom":
        return [
            Row(scp, attack, params=params, note="--message-timeout default (300 s)"),
            Row(scp, attack, scp_args=("--message-timeout", "5"), params=params),
        ]
    return [Row(scp, attack, params=params)]


def _rows(scp: str, attack: str, params: dict[str, float]) -> list[Row]:
    rows = _rows_for(scp, attack, params)
    if scp == "adicom" and attack in SPREAD_ATTACKS:
        rows.append(_spread(rows[0]))
    return rows


def make_rows(
    scps: Sequence[str],
    attacks: Sequence[str],
    baseline: bool = True,
    params: dict[str, dict[str, float]] | None = None,
) -> tuple[list[Row], list[str]]:
    """The rows in run order (per SCP: baseline, then the attacks), and what was left out."""
    rows: list[Row] = []
    skipped: list[str] = []
    for scp in SCP_ORDER:
        if scp not in scps:
            continue
        if baseline:
            rows.append(Row(scp, None))
        for attack in ATTACK_ORDER:
            if attack not in attacks:
                continue
            why = NOT_APPLICABLE.get((scp, attack))
            if why is not None:
                skipped.append(f"{attack} against {scp}: {why}")
                continue
            rows.extend(_rows(scp, attack, (params or {}).get(attack, {})))
    return rows, skipped
