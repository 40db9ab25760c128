"""User identity negotiation (PS3.7 D.3.3.7): the SCU sends it, the SCP checks it."""

from __future__ import annotations

import logging
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import adicom
from adicom.errors import AssociationRejected, IdentityNotConfirmed
from adicom.identity import Users, check_password, hash_password, identity_hook
from adicom.pdu import UserIdentityRQ
from adicom.server import AssociationInfo

pytestmark = pytest.mark.anyio

ALICE = hash_password("wonderland")


def test_a_hash_checks_its_password_only() -> None:
    assert check_password("wonderland", ALICE)
    assert not check_password("Wonderland", ALICE)
    assert not check_password("wonderland", ALICE.replace("scrypt", "md5"))
    assert not check_password("wonderland", "scrypt$12$8$1$not-base64!$x")
    assert hash_password("wonderland") != ALICE  # salted
    with pytest.raises(ValueError, match="cost"):
        hash_password("x", cost=30)


def test_a_users_file_is_read_and_checked(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "users.toml"
    good.write_text(f'[users.alice]\npassword = "{ALICE}"\n\n[users.modality1]\n')
    users = Users.load(good)
    assert users.users == {"alice": ALICE, "modality1": None}
    bad = tmp_path / "bad.toml"
    bad.write_text('[users.bob]\npassword = "plain text"\n')
    with pytest.raises(ValueError, match=r"users\.bob\.password is not a hash"):
        Users.load(bad)
    bad.write_text("users = 3\n")
    with pytest.raises(ValueError, match=r"no \[users.NAME\] table"):
        Users.load(bad)
    bad.write_text("[users\n")
    with pytest.raises(ValueError, match="users file"):
        Users.load(bad)


@asynccontextmanager
async def server(**options: Any) -> AsyncIterator[adicom.Server]:
    async with adicom.Server("ID-SCP", port=0, **options) as scp:
        yield scp


async def echo(scp: adicom.Server, identity: UserIdentityRQ | None) -> Any:
    async with adicom.connect(
        "127.0.0.1", scp.port, called_ae="ID-SCP", user_identity=identity
    ) as assoc:
        assert await assoc.echo() == 0
        return assoc.response


def password(name: str, secret: str, confirm: bool = False) -> UserIdentityRQ:
    return UserIdentityRQ(2, name.encode(), secret.encode(), confirm)


async def test_identities_are_checked_and_required(caplog: pytest.LogCaptureFixture) -> None:
    users = Users({"alice": ALICE, "modality1": None})
    async with server(user_identity=identity_hook(users), require_identity=True) as scp:
        # PS3.8 Table 9-21: rejected-permanent, service-user, no reason given.
        with pytest.raises(AssociationRejected) as none:
            await echo(scp, None)
        assert (none.value.result, none.value.source, none.value.reason) == (1, 1, 1)
        response = await echo(scp, password("alice", "wonderland", confirm=True))
        assert response.user_information.user_identity_ac is not None  # confirmed, as asked
        await echo(scp, UserIdentityRQ(1, b"modality1"))  # a name alone, for this one
        for wrong in (
            password("alice", "looking-glass"),
            UserIdentityRQ(1, b"alice"),  # alice needs her password
            password("mallory", "x"),
            UserIdentityRQ(5, b"header.payload.signature"),  # no token verifier
        ):
            with pytest.raises(AssociationRejected):
                await echo(scp, wrong)
    said = "\n".join(r.getMessage() for r in caplog.records)
    for reason in (
        "no user identity, and one is required",
        "wrong password for 'alice'",
        "'alice' needs a password",
        "unknown user 'mallory'",
        "no verifier for a JSON Web Token",
    ):
        assert reason in said


async def test_wrong_passwords_are_limited_per_address(caplog: pytest.LogCaptureFixture) -> None:
    # Each check costs the event loop a scrypt; a guesser gets 5 a minute.
    users = Users({"alice": ALICE})
    async with server(user_identity=identity_hook(users)) as scp:
        for n in range(Users.MAX_FAILURES):
            with pytest.raises(AssociationRejected):
                await echo(scp, password("alice", f"guess{n}"))
        with pytest.raises(AssociationRejected):
            await echo(scp, password("alice", "wonderland"))  # right, but refused unchecked
    assert any("unchecked" in r.getMessage() for r in caplog.records)


async def test_tokens_go_to_the_verifier_and_its_answer_back() -> None:
    seen: list[tuple[int, bytes]] = []

    async def tokens(identity: UserIdentityRQ, info: AssociationInfo) -> bytes | None:
        seen.append((identity.identity_type, identity.primary_field))
        return b"server-ticket" if identity.primary_field == b"good.jwt" else None

    async with server(user_identity=identity_hook(tokens=tokens)) as scp:
        response = await echo(scp, UserIdentityRQ(5, b"good.jwt", b"", True))
        assert response.user_information.user_identity_ac.server_response == b"server-ticket"
        with pytest.raises(AssociationRejected):
            await echo(scp, UserIdentityRQ(5, b"forged.jwt"))
    assert seen == [(5, b"good.jwt"), (5, b"forged.jwt")]


async def test_an_unconfirmed_identity_fails_when_confirmation_was_asked() -> None:
    async with server() as scp:  # checks no identity: accepts, confirms nothing
        await echo(scp, password("alice", "x"))  # not asked: fine
        with pytest.raises(IdentityNotConfirmed, match="did not confirm our user identity"):
            await echo(scp, password("alice", "x", confirm=True))


async def test_identity_from_the_command_line(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess
    import sys

    from tests.test_cli import run_cli

    made = subprocess.run(
        [sys.executable, "-m", "adicom", "hash-password"],
        input="wonderland\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    stored = made.stdout.strip()
    assert check_password("wonderland", stored)
    empty = subprocess.run(
        [sys.executable, "-m", "adicom", "hash-password"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert empty.returncode == 2 and "no password given" in empty.stderr, empty.stderr
    secret = tmp_path / "secret"
    secret.write_text("wonderland\n")
    caplog.set_level(logging.WARNING, "adicom")
    users = Users({"alice": stored})
    async with server(user_identity=identity_hook(users), require_identity=True) as scp:
        peer = ["--aec", "ID-SCP", "127.0.0.1", str(scp.port)]
        code, out, err = await run_cli(
            "echo", "--user", "alice", "--password-file", str(secret), "--identity-response",
            *peer,
        )  # fmt: skip
        assert code == 0 and "success" in out, err
        code, _, err = await run_cli("echo", "--user", "alice", "--password", "nope", *peer)
        assert code == 1 and "rejected" in err, err
        code, _, err = await run_cli("echo", "--password", "x", *peer)
        assert code == 2 and "need --user" in err, err
    code, _, err = await run_cli("serve", "--port", "0", "--require-identity")
    assert code == 2 and "--require-identity needs --users" in err, err
