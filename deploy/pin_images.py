"""Pin the base and service images of deploy/Dockerfile and deploy/compose.yaml by digest.

    python deploy/pin_images.py          # write NAME:TAG@sha256:… for every pinned tag
    python deploy/pin_images.py --check  # exit 1 if an image has no digest (a release check)

Each exact tag (``python:3.11.13-slim-bookworm``) is looked up in its registry and the
digest of what it names now (the multi-platform index) is written after it; a reference
that has a digest already gets the tag's current one, so running it again picks up a
rebuilt tag. The lookup uses ``skopeo inspect --raw`` (Debian's ``skopeo``) or, without
it, ``docker buildx imagetools inspect``: both talk to the registry, no Docker engine needed.
Images built here (``dicomstl-…``) and ``scratch`` are left alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("deploy/Dockerfile", "deploy/compose.yaml")
#: ``FROM ref`` in a Dockerfile, ``image: ref`` in a compose file.
REFERENCE = re.compile(r"^(?P<lead>[ \t]*(?:FROM[ \t]+(?:--platform=\S+[ \t]+)?|image:[ \t]*))"
                       r"(?P<ref>[\w.\-/:]+?)(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
                       r"(?P<tail>(?:[ \t]+AS[ \t]+\S+)?[ \t]*(?:#.*)?)$", re.MULTILINE)
LOCAL = ("dicomstl-", "scratch")


def is_registry_image(ref: str, stages: set[str]) -> bool:
    """Whether ``ref`` names an image in a registry by tag (not a stage, not ours)."""
    return ":" in ref and ref not in stages and not ref.startswith(LOCAL)


def stage_names(text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE)}


def digest_with_skopeo(ref: str) -> str:
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"docker://{ref}"], check=True,
                         capture_output=True, timeout=120).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def digest_with_buildx(ref: str) -> str:
    out = subprocess.run(["docker", "buildx", "imagetools", "inspect", ref, "--format",
                          "{{json .Manifest}}"], check=True, capture_output=True, text=True,
                         timeout=120).stdout
    return json.loads(out)["digest"]


def registry_digest(ref: str) -> str:
    """The digest ``ref`` names now, from its registry."""
    if shutil.which("skopeo"):
        return digest_with_skopeo(ref)
    return digest_with_buildx(ref)


def pin(text: str, resolve: Callable[[str], str]) -> str:
    """``text`` with every registry image's tag followed by ``resolve(tag)``'s digest."""
    stages = stage_names(text)
    cache: dict[str, str] = {}

    def replace(match: re.Match) -> str:
        ref = match["ref"]
        if not is_registry_image(ref, stages):
            return match.group(0)
        if ref not in cache:
            cache[ref] = resolve(ref)
        return f"{match['lead']}{ref}@{cache[ref]}{match['tail']}"

    return REFERENCE.sub(replace, text)


def unpinned(text: str) -> list[str]:
    """Registry images in ``text`` without a digest."""
    stages = stage_names(text)
    return [m["ref"] for m in REFERENCE.finditer(text)
            if is_registry_image(m["ref"], stages) and not m["digest"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only say which images have no digest (exit 1 if any)")
    args = parser.parse_args(argv)
    missing = []
    for name in FILES:
        path = ROOT / name
        text = path.read_text()
        if args.check:
            missing += [f"{name}: {ref}" for ref in unpinned(text)]
            continue
        pinned = pin(text, registry_digest)
        if pinned != text:
            path.write_text(pinned)
            print(f"pinned the images of {name}")
    for line in missing:
        print(f"no digest: {line}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
