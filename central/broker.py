"""The production broker's access control: Mosquitto's dynamic security plugin, kept by central.

Who may do what (docs/protocol.md, Broker security):

- a box waiting for activation connects anonymously and reaches only the activation topics;
- an activated box is a client of its own (its device id, and the password it sent in its
  signed activation request) with a role of its own: it publishes only its own batch and status
  topics and reads only its own acknowledgements and documents, and its region's;
- central and operations have their own clients and roles;
- central's consumers (the company's market-information systems) may have one of their own, which
  reads every box's batches, acknowledgements and status and sends nothing.

``initial_config`` writes the plugin's file before the broker first starts (``counterbox-central
broker init``); after that, central changes it through the plugin's control topic as boxes are
activated and revoked (``BrokerAdmin``). Deleting a box's client disconnects it at once and
refuses it from then on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from agent.mqtt import Backoff, MqttError, MqttLink
from provisioning import protocol

from .errors import AccessControlSilent, CentralError

logger = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
CENTRAL_USER = "counterbox-central"
OPERATIONS_USER = "counterbox-ops"
CONSUMER_USER = "counterbox-consumer"
CONSUMER_ROLE = "consumer"
WAITING_GROUP = "waiting-boxes"
ANSWER_TIMEOUT = 10.0  # seconds for the plugin to answer a command


def _acl(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _sends(*topics: str) -> list[dict[str, Any]]:
    return [_acl("publishClientSend", t) for t in topics]


def _reads(*topics: str, literal: bool = False) -> list[dict[str, Any]]:
    kind = "subscribeLiteral" if literal else "subscribePattern"
    return [acl for t in topics for acl in (_acl(kind, t), _acl("publishClientReceive", t))]


def central_acls(prefix: str) -> list[dict[str, Any]]:
    reads = [f"{prefix}/devices/+/batch", f"{prefix}/devices/+/status", f"{prefix}/activation/+/hello",
             f"{prefix}/activation/+/request"]
    # activation/+/code: central clears a pushed code once it is used; hello and request: a refused one
    # retained (anyone may send one). $share/+/...: instances sharing
    # the load subscribe under a group name, which the plugin checks as part of the topic. The documents'
    # topics: central reads the broker's retained copies and publishes again what it lost (central/retained.py);
    # it cannot sign one, and a box applies only what operations signed.
    docs = [f"{prefix}/devices/+/docs/#", f"{prefix}/regions/+/docs/#"]
    return (_sends(f"{prefix}/devices/+/ack", f"{prefix}/activation/+/result", f"{prefix}/activation/+/code",
                   f"{prefix}/activation/+/hello", f"{prefix}/activation/+/request", f"{CONTROL}/#", *docs)
            + _reads(*reads, f"{CONTROL}/#", *docs)
            + [_acl("subscribePattern", f"$share/+/{topic}") for topic in reads])


def consumer_acls(prefix: str) -> list[dict[str, Any]]:
    """Read-only: what the boxes send and what central answers, directly or shared among instances."""
    reads = [f"{prefix}/devices/+/batch", f"{prefix}/devices/+/ack", f"{prefix}/devices/+/status"]
    return _reads(*reads) + [_acl("subscribePattern", f"$share/+/{topic}") for topic in reads]


def operations_acls(prefix: str) -> list[dict[str, Any]]:
    return (_sends(f"{prefix}/devices/+/docs/#", f"{prefix}/regions/+/docs/#", f"{prefix}/activation/+/code",
                   f"{CONTROL}/#")
            + _reads(f"{CONTROL}/#"))


def waiting_acls(prefix: str) -> list[dict[str, Any]]:
    return (_sends(f"{prefix}/activation/+/hello", f"{prefix}/activation/+/request")
            + _reads(f"{prefix}/activation/+/code", f"{prefix}/activation/+/result"))


def device_acls(prefix: str, device: str, region: str) -> list[dict[str, Any]]:
    own = f"{prefix}/devices/{device}"
    reads = [f"{own}/ack", f"{own}/docs/#"] + ([f"{prefix}/regions/{region}/docs/#"] if region else [])
    return _sends(f"{own}/batch", f"{own}/status") + _reads(*reads, literal=True)


def _hashed(password: str) -> dict[str, Any]:
    """A password as the plugin stores it: PBKDF2-SHA512 over a random salt."""
    salt, iterations = secrets.token_bytes(12), 101
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": iterations}


def initial_config(prefix: str, *, central_password: str, operations_password: str,
                   consumer_password: str | None = None) -> dict[str, Any]:
    """The plugin's file for a new broker: central, operations, the boxes waiting for activation, and
    central's consumers when they are given a password. Everything not granted is refused."""
    consumers = ([{"username": CONSUMER_USER, "roles": [{"rolename": CONSUMER_ROLE}], **_hashed(consumer_password)}]
                 if consumer_password is not None else [])
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False,
                             "subscribe": False, "unsubscribe": True},
        "clients": [
            {"username": CENTRAL_USER, "roles": [{"rolename": "central"}], **_hashed(central_password)},
            {"username": OPERATIONS_USER, "roles": [{"rolename": "operations"}], **_hashed(operations_password)},
            *consumers,
        ],
        "groups": [{"groupname": WAITING_GROUP, "roles": [{"rolename": "waiting-box"}], "clients": []}],
        "anonymousGroup": WAITING_GROUP,
        "roles": [
            {"rolename": "central", "acls": central_acls(prefix)},
            {"rolename": "operations", "acls": operations_acls(prefix)},
            {"rolename": CONSUMER_ROLE, "acls": consumer_acls(prefix)},
            {"rolename": "waiting-box", "acls": waiting_acls(prefix)},
        ],
    }


def write_initial_config(path: Path, prefix: str, *, central_password: str, operations_password: str,
                         consumer_password: str | None = None) -> None:
    """Create the plugin's file, readable by its owner alone: it holds the password hashes of every
    client (give it to the broker's user, as docs/configuration.md shows)."""
    text = json.dumps(initial_config(prefix, central_password=central_password, operations_password=operations_password,
                                     consumer_password=consumer_password), indent=2)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CentralError(f"{path} exists: the broker's access control is set up already") from None
    except OSError as error:
        raise CentralError(f"{path}: cannot create the broker's access control file: {error.strerror}") from None
    with os.fdopen(fd, "w") as file:
        file.write(text)


def admit_commands(prefix: str, device: str, region: str, password: str) -> list[dict[str, Any]]:
    """A box activated: its client and role, made afresh (so a box asking again gets the same)."""
    role = f"device-{device}"
    return [
        {"command": "deleteClient", "username": device},
        {"command": "deleteRole", "rolename": role},
        {"command": "createRole", "rolename": role, "acls": device_acls(prefix, device, region)},
        {"command": "createClient", "username": device, "password": password, "roles": [{"rolename": role}]},
    ]


def consumer_name(text: str) -> str:
    """A consumer's client name: 1 to 64 ASCII letters, digits, '-', '_' or '.', and never one the broker
    keeps for central, operations or an activated box (``cb-`` and its key's id), whose clients are made
    and deleted by name."""
    if not protocol.valid_device_id(text):
        raise CentralError(f"consumer name {text!r} must be 1 to {protocol.MAX_DEVICE_ID} ASCII letters, digits, "
                           "'-', '_' or '.'")
    if text in (CENTRAL_USER, OPERATIONS_USER) or text.startswith("cb-"):
        raise CentralError(f"consumer name {text!r} is the broker's name for central, operations or a box "
                           "(cb-...): choose another")
    return text


def add_consumer_commands(prefix: str, name: str, password: str) -> list[dict[str, Any]]:
    """A read-only consumer added to a running broker: the consumer role as ``broker init`` makes it
    (a broker that has it keeps its own), and the client."""
    return [{"command": "createRole", "rolename": CONSUMER_ROLE, "acls": consumer_acls(prefix)},
            {"command": "createClient", "username": name, "password": password,
             "roles": [{"rolename": CONSUMER_ROLE}]}]


def cut_off_commands(device: str) -> list[dict[str, Any]]:
    """A box revoked: the broker disconnects it at once and refuses it from then on."""
    return [{"command": "deleteClient", "username": device}, {"command": "deleteRole", "rolename": f"device-{device}"}]


def add_connection_options(parser) -> None:
    """How a command reaches the production broker: its own client, over TLS."""
    parser.add_argument("--username", help="this tool's client at the broker (production: counterbox-central "
                                           "or counterbox-ops)")
    parser.add_argument("--password-file", type=Path, help="the file holding that client's password")
    parser.add_argument("--ca-file", type=Path, help="the CA of the broker's TLS certificate (production)")


def connection(args) -> dict[str, Any]:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as error:
            raise CentralError(f"cannot read the broker password {args.password_file}: {error.strerror}") from None
    return {"username": args.username, "password": password, "ca_file": args.ca_file}


MIN_PASSWORD = 12  # characters of a broker password kept in a file someone else wrote


def new_password(path: Path) -> str:
    """A random password kept in ``path`` (mode 0600); the one there already, if there is one."""
    from storage.keys import write_secret

    if path.exists():
        try:
            password = path.read_text(encoding="utf-8").strip()
        except (UnicodeDecodeError, IsADirectoryError) as error:
            raise CentralError(f"password file {path}: not a text file ({error})") from None
        if len(password) < MIN_PASSWORD:
            # An empty file would give the broker client an empty password: anyone could be central.
            raise CentralError(f"password file {path} holds {len(password)} characters, fewer than {MIN_PASSWORD}; "
                               "remove it and one is made")
        return password
    password = secrets.token_urlsafe(24)
    write_secret(path, password.encode())
    return password


# Errors the plugin answers that mean "already as wanted": making afresh deletes what may not exist.
_FINE = ("Client not found", "Role not found")


class BrokerAdmin:
    """Sends commands to the plugin over MQTT and waits for its answers."""

    def __init__(self, link: MqttLink):
        self._link = link
        self._waiting: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    @staticmethod
    def link(*, host: str, port: int, username: str, password: str, ca_file: Path | None,
             client_id: str) -> MqttLink:
        return MqttLink(host=host, port=port, client_id=client_id, username=username, password=password,
                        ca_file=ca_file, subscriptions=[f"{CONTROL}/response"],
                        backoff=Backoff(first=0.05, most=1.0))  # back at once after a broker restart

    async def __aenter__(self) -> "BrokerAdmin":
        await self._link.__aenter__()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._link.close()

    async def _read(self) -> None:
        async for message in self._link.messages():
            try:
                responses = json.loads(message.payload)["responses"]
            except (ValueError, KeyError, TypeError):
                continue
            for response in responses:
                future = self._waiting.pop(str(response.get("correlationData", "")), None)
                if future is not None and not future.done():
                    future.set_result(response)

    async def roles_of(self, username: str) -> list[str] | None:
        """The roles of the plugin's client ``username``, sorted; None when it has no such client."""
        [answer] = await self.execute([{"command": "getClient", "username": username}], fine=("Client not found",))
        if answer.get("error"):
            return None
        return sorted(role.get("rolename", "") for role in (answer.get("data") or {}).get("client", {}).get("roles", []))

    async def bring_central_up_to_date(self, prefix: str) -> None:
        """Add to central's role what this central is granted and its role lacks: a broker whose access control
        an earlier ``broker init`` wrote (which writes it once) lacks what came later, the documents' topics.
        The plugin disconnects a role's clients when the role changes, this one among them: the answer may
        be lost with the connection, so the role is read again, on the next connection, to know."""
        wanted, failed = central_acls(prefix), "its role kept lacking them"
        for _ in range(3):
            try:
                [answer] = await self.execute([{"command": "getRole", "rolename": "central"}])
                held = {(acl.get("acltype"), acl.get("topic"))
                        for acl in (answer.get("data") or {}).get("role", {}).get("acls", [])}
                missing = [acl for acl in wanted if (acl["acltype"], acl["topic"]) not in held]
                if not missing:
                    return
                await self.execute([{"command": "addRoleACL", "rolename": "central", **acl} for acl in missing])
            except CentralError as error:
                failed = str(error)
        raise CentralError(f"central's grants not added to its role: {failed}")

    async def cut_off(self, device: str) -> bool:
        """A box revoked: its client and role go, so the broker disconnects it at once and refuses it from
        then on; True when its client was there to go (False: gone already). A client of that name that is
        not the box's (a consumer's) is left as it is: CentralError."""
        roles = await self.roles_of(device)
        if roles not in (None, [], [f"device-{device}"]):
            raise CentralError(f"the broker's client {device} is not that box's (its roles: {', '.join(roles)}); "
                               "it is left as it is")
        await self.execute(cut_off_commands(device))
        return roles is not None

    async def execute(self, commands: list[dict[str, Any]], *, fine: tuple[str, ...] = _FINE) -> list[dict[str, Any]]:
        """Run ``commands`` in order and return the plugin's answers; CentralError naming the first that
        failed with an error other than those ``fine`` names."""
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):  # not wait_for: it may swallow a cancellation
                await self._link.connected.wait()
        except TimeoutError:
            raise AccessControlSilent(f"the broker's access control is unreachable for {ANSWER_TIMEOUT:.0f} s") from None
        loop = asyncio.get_running_loop()
        futures = []
        for command in commands:
            correlation = secrets.token_hex(8)
            futures.append(self._waiting.setdefault(correlation, loop.create_future()))
            command["correlationData"] = correlation
        try:
            await self._link.publish(CONTROL, json.dumps({"commands": commands}).encode())
            async with asyncio.timeout(ANSWER_TIMEOUT):
                answers = await asyncio.gather(*futures)
        except (MqttError, TimeoutError) as error:
            raise AccessControlSilent(f"the broker's access control did not answer: {str(error) or 'timed out'}") from None
        finally:
            for command in commands:  # an answer that never came is waited for no longer
                self._waiting.pop(command["correlationData"], None)
        for command, answer in zip(commands, answers):
            if answer.get("error") and answer["error"] not in fine:
                raise CentralError(f"the broker refused {command['command']}: {answer['error']}")
        return answers
