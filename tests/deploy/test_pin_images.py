"""deploy/pin_images.py: digests go after exact tags, stages and our own images stay as they
are, and a rebuilt tag's new digest replaces the old one (a stand-in registry: no network)."""

from __future__ import annotations

import hashlib
import importlib.util

from tests.deploy.contract import COMPOSE, DEPLOY, DOCKERFILE


def _module():
    spec = importlib.util.spec_from_file_location("pin_images", DEPLOY / "pin_images.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PIN = _module()


def fake_registry(generation: int = 0):
    """A digest for each reference, different for each ``generation`` (a rebuilt tag)."""
    looked_up = []

    def resolve(ref: str) -> str:
        looked_up.append(ref)
        return "sha256:" + hashlib.sha256(f"{ref}/{generation}".encode()).hexdigest()

    resolve.looked_up = looked_up
    return resolve


def test_the_dockerfile_gets_a_digest_for_each_base_image_once():
    text = DOCKERFILE.read_text()
    resolve = fake_registry()
    pinned = PIN.pin(text, resolve)
    assert sorted(set(resolve.looked_up)) == sorted(resolve.looked_up)  # each looked up once
    assert set(resolve.looked_up) == {
        line.split()[1] for line in text.splitlines()
        if line.startswith("FROM ") and ":" in line.split()[1]}
    for ref in set(resolve.looked_up):
        assert f"{ref}@{fake_registry()(ref)}" in pinned
    assert "FROM app AS web" in pinned and "FROM scratch AS source" in pinned
    assert PIN.unpinned(text) and not PIN.unpinned(pinned)
    # the stages and their names survive
    assert [line.split(" AS ")[-1] for line in pinned.splitlines() if line.startswith("FROM")] \
        == [line.split(" AS ")[-1] for line in text.splitlines() if line.startswith("FROM")]


def test_compose_gets_digests_for_others_images_and_keeps_its_own():
    text = COMPOSE.read_text()
    pinned = PIN.pin(text, fake_registry())
    assert "image: redis:7.4.2-bookworm@sha256:" in pinned
    assert "image: dicomstl-web:${IMAGE_TAG:-dev}\n" in pinned
    assert PIN.unpinned(pinned) == []


def test_pinning_again_takes_a_rebuilt_tags_new_digest():
    once = PIN.pin(DOCKERFILE.read_text(), fake_registry(0))
    again = PIN.pin(once, fake_registry(1))
    assert again != once and again == PIN.pin(DOCKERFILE.read_text(), fake_registry(1))
