"""Identity files and contact cards of the reference client."""

import json
import os
import stat

import pytest

from relay.client.identity import ContactCard, Identity, IdentityError, check_uuid


def test_identity_round_trip(tmp_path):
    path = tmp_path / "id.json"
    identity = Identity.generate()
    identity.save(path)
    loaded = Identity.load(path)
    assert loaded.user_id == identity.user_id
    assert loaded.ed25519_public == identity.ed25519_public
    assert loaded.x25519_public == identity.x25519_public


def test_user_id_is_lowercase_uuid4():
    user_id = Identity.generate().user_id
    assert check_uuid(user_id) == user_id
    assert user_id[14] == "4"


def test_saved_file_mode_0600(tmp_path):
    path = tmp_path / "id.json"
    previous = os.umask(0)
    try:
        Identity.generate().save(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_refuses_existing_file(tmp_path):
    path = tmp_path / "id.json"
    path.write_text("keep me")
    with pytest.raises(IdentityError, match="already exists"):
        Identity.generate().save(path)
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_load_rejects_exposed_file(tmp_path, mode):
    path = tmp_path / "id.json"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(IdentityError, match="not found"):
        Identity.load(tmp_path / "absent.json")


def write_private(path, document) -> None:
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    path.chmod(0o600)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format"),
        ({"user_id": "NOT-A-UUID"}, "invalid user id"),
        ({"ed25519_private": "00"}, "ed25519_private must be 64 hex"),
        ({"x25519_private": "zz" * 32}, "x25519_private must be 64 hex"),
    ],
)
def test_load_rejects_bad_fields(tmp_path, change, message):
    path = tmp_path / "id.json"
    document = json.loads(Identity.generate().to_json()) | change
    write_private(path, document)
    with pytest.raises(IdentityError, match=message):
        Identity.load(path)


def test_load_rejects_non_json(tmp_path):
    path = tmp_path / "id.json"
    write_private(path, "{not json")
    with pytest.raises(IdentityError, match="not valid JSON"):
        Identity.load(path)


def test_contact_card_round_trip():
    identity = Identity.generate()
    text = str(identity.contact_card)
    assert text == f"{identity.user_id}:{identity.x25519_public.hex()}"
    assert ContactCard.parse(text) == identity.contact_card


@pytest.mark.parametrize(
    "text",
    [
        "no-separator",
        "not-a-uuid:" + "00" * 32,
        "5f0c3a8e-2b71-4d6a-9c3e-8a1f7b2d4e60:" + "00" * 31,
        "5f0c3a8e-2b71-4d6a-9c3e-8a1f7b2d4e60:" + "xy" * 32,
        "5F0C3A8E-2B71-4D6A-9C3E-8A1F7B2D4E60:" + "00" * 32,
    ],
)
def test_contact_card_parse_rejects(text):
    with pytest.raises(ValueError, match="invalid"):
        ContactCard.parse(text)
