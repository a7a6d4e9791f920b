"""The contract (docs/asyncapi.yaml) as a check: does a message on a topic match its channel's message?

    problem = check("counterbox/v1/devices/shop-1/batch", payload)   # None, or what is wrong

Used by every test that runs a stack (conftest's ``stack``): each message the system sends there is
checked, so the document and the code cannot drift apart."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from provisioning import jws
from provisioning.errors import SignatureError

CONTRACT = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
_URI = "urn:counterbox:asyncapi"


@cache
def document() -> dict:
    return yaml.safe_load(CONTRACT.read_text())


@cache
def _registry() -> Registry:
    return Registry().with_resource(_URI, Resource(contents=document(), specification=DRAFT7))


@cache
def _validator(ref: str) -> Draft7Validator:
    return Draft7Validator({"$ref": _URI + ref}, registry=_registry())


def _resolve(ref: str) -> dict:
    node = document()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


@cache
def _channels() -> list[tuple[re.Pattern, dict]]:
    channels = []
    for channel in document()["channels"].values():
        # A document's name may hold a '/' (order/{id}); every other parameter is one level.
        pattern = re.escape(channel["address"]).replace(r"\{name\}", "(.+)")
        pattern = re.sub(r"\\\{\w+\\\}", "([^/]+)", pattern)
        message = _resolve(next(iter(channel["messages"].values()))["$ref"])
        channels.append((re.compile(pattern + "$"), message))
    return channels


def check(topic: str, payload: bytes) -> str | None:
    if not payload:
        return None  # a retained message cleared
    matching = [message for pattern, message in _channels() if pattern.match(topic)]
    if not matching:
        return f"{topic}: no channel of the contract has this address"
    message = matching[0]
    try:
        token = payload.decode("ascii")
        header = jws.unverified_header(token)
        body = json.loads(jws.b64url_decode(token.split(".")[1]))
    except (UnicodeDecodeError, SignatureError, ValueError, IndexError) as error:
        return f"{topic}: not a JWS compact token ({error})"
    for part, value in (("x-jws-header", header), ("x-jws-payload", body)):
        errors = sorted(_validator(message[part]["$ref"]).iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(map(str, errors[0].absolute_path))
            return f"{topic}: {message['name']} {part[6:]} at /{where}: {errors[0].message[:300]}"
    return None
