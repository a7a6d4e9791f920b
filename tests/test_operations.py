"""Operations tooling: registering devices with central."""

import json
from pathlib import Path
import os

import pytest

from central.ops import main as ops_main
from central.store import CentralStore, Shop

from .harness import run_main

def _key_beginning_with_a_dash() -> str:
    """A real Ed25519 public key whose base64url text begins with '-', as one key in 64 does."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from provisioning.identity import public_key_text

    while not (text := public_key_text(Ed25519PrivateKey.generate())).startswith("-"):
        pass
    return text


KEY_WITH_A_DASH = _key_beginning_with_a_dash()


def ops(*args, stdin=None):
    """counterbox-ops, run in this process (so mutation testing sees what it does), as a command would be."""
    return run_main(ops_main, args, stdin)


@pytest.mark.parametrize("how", ["identity-file", "identity-stdin", "options"])
def test_a_key_beginning_with_a_dash_registers_every_way(tmp_path, how):
    db = tmp_path / "central.db"
    identity = json.dumps({"device": "shop-7", "public_key": KEY_WITH_A_DASH})
    (tmp_path / "shop-7.json").write_text(identity)
    args = {"identity-file": ["--identity", str(tmp_path / "shop-7.json")], "identity-stdin": ["--identity", "-"],
            "options": ["--device", "shop-7", f"--public-key={KEY_WITH_A_DASH}"]}[how]
    result = ops("register", "--central-db", str(db), *args, stdin=identity if how == "identity-stdin" else "")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "device shop-7 registered\n"
    store = CentralStore(db)
    assert store.device("shop-7").public_key == KEY_WITH_A_DASH
    store.close()


def test_a_key_pasted_with_spaces_around_it_is_registered_in_its_one_spelling(tmp_path):
    """As the box's activation request names it: a key kept as pasted was "registered with another key"."""
    db = tmp_path / "central.db"
    result = ops("register", "--central-db", str(db), "--device", "shop-7", f"--public-key=  {KEY_WITH_A_DASH}\n")
    assert result.returncode == 0, result.stderr
    store = CentralStore(db)
    assert store.device("shop-7").public_key == KEY_WITH_A_DASH
    store.close()


def test_re_keying_a_registered_device_needs_replace(tmp_path):
    db = tmp_path / "central.db"
    first, second = _key_beginning_with_a_dash(), _key_beginning_with_a_dash()
    assert ops("register", "--central-db", str(db), "--device", "shop-7", "--public-key=" + first).returncode == 0
    refused = ops("register", "--central-db", str(db), "--device", "shop-7", "--public-key=" + second)
    assert refused.returncode == 2
    assert "device shop-7 is registered with another public key; pass --replace to re-key it" in refused.stderr
    assert ops("register", "--central-db", str(db), "--device", "shop-7", "--public-key=" + second,
               "--replace").returncode == 0


@pytest.mark.parametrize(
    "args,stdin,message",
    [
        (["--identity", "-"], "not json", "is not what 'counterbox identity show' prints"),
        (["--device", "shop-7"], None, "give --identity FILE, or both --device and --public-key"),
        (["--device", "shop-7", "--public-key=abc"], None, "'abc' is not an Ed25519 public key"),
        # --device beside --identity was ignored: the file's id registered, and said so as if it were the one given.
        (["--identity", "-", "--device", "shop-6"], '{"device": "shop-9", "public_key": "x"}',
         "give --identity FILE, or --device and --public-key, not both"),
        (["--device", "shop-7", f"--public-key={KEY_WITH_A_DASH}", "--shop", "\x1b[2Jx"], None,
         "shop '\\x1b[2Jx' is not a licence number"),
    ],
)
def test_mistakes_are_named(tmp_path, args, stdin, message):
    result = ops("register", "--central-db", str(tmp_path / "c.db"), *args, stdin=stdin)
    assert result.returncode == 2 and message in result.stderr


def test_a_device_registered_for_a_shop_takes_its_licence_and_region(tmp_path):
    db = tmp_path / "central.db"
    key = f"--public-key={KEY_WITH_A_DASH}"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3",
               "--region", "honghe").returncode == 0
    result = ops("register", "--central-db", str(db), "--device", "shop-8", key, "--shop", "530102100123")
    assert (result.returncode, result.stdout) == (0, "device shop-8 registered for 530102100123 (Mengzi No. 3)\n")
    store = CentralStore(db)
    assert (store.device("shop-8").shop, store.device("shop-8").region) == ("530102100123", "honghe")
    store.close()
    # A shop's name, or a licence mistyped, filed the box's sales under a shop no report found.
    for shop, region, said in (("Mengzi No. 3", "", "shop 'Mengzi No. 3' is not a licence number"),
                               ("530102100124", "", "shop 530102100124 is not registered: --shop takes the licence"),
                               ("530102100123", "kunming", "shop 530102100123 is in region honghe, not kunming")):
        refused = ops("register", "--central-db", str(db), "--device", "shop-9", key, "--shop", shop,
                      *(["--region", region] if region else []))
        assert refused.returncode == 2 and said in refused.stderr, refused.stderr
    store = CentralStore(db)
    assert store.device("shop-9") is None
    store.close()


def test_registering_needs_an_identity_or_both_device_and_key(tmp_path):
    result = ops("register", "--central-db", str(tmp_path / "central.db"), "--device", "shop-9")
    assert result.returncode == 2
    assert result.stderr == "counterbox-ops: error: give --identity FILE, or both --device and --public-key\n"


@pytest.mark.parametrize("broker", ["localhost", "127.0.0.1:", "127.0.0.1:port", "127.0.0.1:0", "127.0.0.1:65536"])
def test_a_broker_given_wrongly_stops_a_push_before_anything_is_signed(tmp_path, broker):
    db, key, prices = tmp_path / "central.db", tmp_path / "ops.key", tmp_path / "prices.csv"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    prices.write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    result = ops("prices", "push", "--central-db", str(db), "--ops-key", str(key), "--broker", broker,
                 "--region", "honghe", str(prices))
    assert result.returncode == 2
    assert f"argument --broker: {broker!r} is not HOST:PORT (e.g. 127.0.0.1:1883)" in result.stderr
    assert not db.exists()  # no version taken, nothing kept


@pytest.mark.parametrize("given, address", [("10.0.0.5:8883", ("10.0.0.5", 8883)), (":1883", ("127.0.0.1", 1883)),
                                            ("[::1]:1883", ("::1", 1883))])
def test_a_broker_is_host_and_port(given, address):
    from central.ops import broker_address

    assert broker_address(given) == address


PUSH_PRICES = ["prices", "push", "--central-db", "{db}", "--ops-key", "{key}", "--region", "honghe", "{csv}"]
PUSH_ORDER = ["order", "push", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7", "--order-id", "w48",
              "{csv}"]
REVOKE = ["revoke", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7"]


@pytest.mark.parametrize("command, option, message", [
    (PUSH_PRICES, "--currency=cny", "'cny' is not an ISO 4217 code: three capital letters"),
    (PUSH_PRICES, "--currency=RMB", "'RMB' is not an ISO 4217 code: write CNY"),
    (PUSH_PRICES, "--currency=CYN", "'CYN' is no ISO 4217 currency in use (a typo? CNY is the yuan)"),
    (PUSH_PRICES, "--currency=JPY", "JPY's minor unit is not the hundredth, and prices are read in hundredths"),
    (PUSH_PRICES, "--valid-days=0", "0 must be above 0 and at most 3650"),
    (PUSH_PRICES, "--valid-days=-1", "-1 must be above 0 and at most 3650"),
    (PUSH_PRICES, "--valid-days=nan", "nan must be above 0 and at most 3650"),
    (PUSH_PRICES, "--valid-days=1e300", "1e300 must be above 0 and at most 3650"),
    (PUSH_ORDER, "--valid-days=inf", "inf must be above 0 and at most 3650"),
    (REVOKE, "--grace-minutes=-5", "-5 must be 0 or more and at most 43200"),
    (REVOKE, "--grace-minutes=nan", "nan must be 0 or more and at most 43200"),
    (REVOKE, "--grace-minutes=a week", "'a week' is not a number"),
])
def test_a_document_valid_for_no_time_or_past_the_clocks_range_is_refused_before_it_is_signed(
        tmp_path, command, option, message):
    paths = {"db": tmp_path / "central.db", "key": tmp_path / "ops.key", "csv": tmp_path / "lines.csv"}
    assert ops("keygen", "--ops-key", str(paths["key"])).returncode == 0
    paths["csv"].write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    result = ops(*(arg.format(**paths) for arg in command), option)
    assert result.returncode == 2
    assert f"argument {option.split('=')[0]}: {message}" in result.stderr
    assert not paths["db"].exists()  # nothing signed, no version taken


def test_an_activation_code_valid_for_no_time_is_refused_before_it_is_issued(tmp_path):
    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(key), "--shop", "530100000001",
                 "--valid-hours=0")
    assert result.returncode == 2 and "argument --valid-hours: 0 must be above 0 and at most 8760" in result.stderr
    assert not db.exists()


def test_a_revocation_that_cannot_be_signed_leaves_the_box_in_service(tmp_path):
    db = tmp_path / "central.db"
    assert ops("register", "--central-db", str(db), "--device", "shop-7", f"--public-key={KEY_WITH_A_DASH}").returncode == 0
    result = ops("revoke", "--central-db", str(db), "--ops-key", str(tmp_path / "missing.key"), "--device", "shop-7",
                 "--broker", "127.0.0.1:1")
    assert result.returncode == 2 and "missing.key does not exist (create it with 'counterbox-ops keygen')" in result.stderr
    result = ops("revoke", "--central-db", str(db), "--ops-key", str(tmp_path / "missing.key"), "--device", "shop-7",
                 "--reason", os.fsdecode(b"closed \xff"))
    assert result.returncode == 2 and "argument --reason: 'closed \\udcff' is not UTF-8 text" in result.stderr
    store = CentralStore(db)
    try:
        assert store.device("shop-7").revoked_at is None
    finally:
        store.close()


def test_settings_with_a_time_zone_no_box_knows_are_not_signed(tmp_path):
    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    result = ops("settings", "push", "--central-db", str(db), "--ops-key", str(key), "--region", "honghe",
                 "--timezone", "Mars/Olympus_Mons", "--broker", "127.0.0.1:1")
    assert result.returncode == 2
    assert "time zone 'Mars/Olympus_Mons' is not in the time zone database" in result.stderr
    store = CentralStore(db)
    try:
        assert store.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
    finally:
        store.close()


@pytest.mark.parametrize("slip, font, message", [("slip.gif", None, "a slip is a .png or a .pdf"),
                                                 ("slip.png", "no-such-font.ttf", "font no-such-font.ttf")])
def test_a_slip_that_cannot_be_made_issues_no_code(tmp_path, slip, font, message):
    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi No. 3",
               "--region", "honghe").returncode == 0
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(key), "--shop", "530100000001",
                 "--slip", str(tmp_path / slip), *(["--font", font] if font else []))
    assert result.returncode == 2 and message in result.stderr
    store = CentralStore(db)
    try:
        assert store.conn.execute("SELECT count(*) FROM activation_codes").fetchone() == (0,)
    finally:
        store.close()
    assert not (tmp_path / slip).exists()


def test_an_identity_whose_key_is_not_text_is_named():
    result = ops("register", "--central-db", "unused.db", "--identity", "-",
                 stdin=json.dumps({"device": "shop-7", "public_key": 5}))
    assert result.returncode == 2 and "5 is not an Ed25519 public key" in result.stderr


@pytest.mark.parametrize("command", [PUSH_PRICES, ["order", "push", "--central-db", "{db}", "--ops-key", "{key}",
                                                   "--device", "shop-7", "--order-id", "w48", "{csv}"]])
def test_a_file_to_push_that_is_not_utf8_is_named_before_anything_is_signed(tmp_path, command):
    paths = {"db": tmp_path / "central.db", "key": tmp_path / "ops.key", "csv": tmp_path / "lines.csv"}
    assert ops("keygen", "--ops-key", str(paths["key"])).returncode == 0
    paths["csv"].write_bytes(b"barcode,name,price,quantity\n6901028075831,\xb0\xfc,23.00,2\n")
    result = ops(*(arg.format(**paths) for arg in command))
    assert result.returncode == 2 and f"{paths['csv']}: the file is not UTF-8 text" in result.stderr, result.stderr
    assert not paths["db"].exists()


@pytest.mark.parametrize("args, message", [
    (["--device", "shop/7"], "device id 'shop/7' must be 1 to 64 ASCII letters, digits, '-', '_' or '.'"),
    (["--device", "shop 7"], "device id 'shop 7' must be 1 to 64 ASCII letters"),
    (["--device", "shop-7", "--region", "red river"], "region 'red river' must be 1 to 64"),
])
def test_a_device_id_or_region_that_is_no_topic_level_is_not_registered(tmp_path, args, message):
    db = tmp_path / "central.db"
    result = ops("register", "--central-db", str(db), *args, f"--public-key={KEY_WITH_A_DASH}")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not db.exists()


def test_an_activation_code_for_a_device_id_that_is_no_topic_level_is_not_issued(tmp_path):
    db, key = tmp_path / "central.db", tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(key), "--shop", "530100000001",
                 "--device", "cb a")
    assert result.returncode == 2 and "device id 'cb a' must be 1 to 64" in result.stderr
    assert not db.exists()


def test_each_push_signs_the_next_version_keeps_it_and_leaves_it_retained_for_its_boxes(stack, tmp_path):
    """Operations' pushes, in this process (mutation testing sees them), against the stack's broker: each prints
    what it signed, keeps it in central's database, and leaves it retained on its topic, where a box that comes
    later finds it, signed by the operations key; revoking also marks the box; a code pushed waits for its box."""
    import asyncio

    from agent.mqtt import MqttLink
    from provisioning import activation, documents
    from provisioning.identity import key_id, load_key

    key = tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    ops_key = load_key(key)
    store = CentralStore(stack.central_db)
    store.register("shop-1", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    (tmp_path / "order.csv").write_text("barcode,name,quantity\n6901028075848,Hongtashan (carton),5\n")
    common = ["--central-db", str(stack.central_db), "--ops-key", str(key), "--broker", f"127.0.0.1:{stack.broker_port}"]
    printed = {}
    for what, args in [("prices", ["prices", "push", *common, "--region", "honghe", str(tmp_path / "prices.csv")]),
                       ("order", ["order", "push", *common, "--device", "shop-1", "--order-id", "W48-1",
                                  str(tmp_path / "order.csv")]),
                       ("settings", ["settings", "push", *common, "--region", "honghe", "--mode-timeout", "300"]),
                       ("revocation", ["revoke", *common, "--device", "shop-1", "--reason", "the shop closed",
                                       "--grace-minutes", "5"])]:
        result = ops(*args)
        assert result.returncode == 0, (what, result.stderr)
        printed[what] = json.loads(result.stdout)
    assert {what: (p["name"], p["version"], p["scope"], p["topic"]) for what, p in printed.items()} == {
        "prices": ("price_list", 1, {"region": "honghe"}, "counterbox/v1/regions/honghe/docs/price_list"),
        "order": ("order/W48-1", 1, {"device": "shop-1"}, "counterbox/v1/devices/shop-1/docs/order/W48-1"),
        "settings": ("settings", 1, {"region": "honghe"}, "counterbox/v1/regions/honghe/docs/settings"),
        "revocation": ("revocation", 1, {"device": "shop-1"}, "counterbox/v1/devices/shop-1/docs/revocation")}
    store = CentralStore(stack.central_db)
    try:
        assert store.device("shop-1").revoked_at is not None
        kept = store.conn.execute("SELECT name, version, published_at IS NOT NULL FROM documents ORDER BY name").fetchall()
    finally:
        store.close()
    assert kept == [("order/W48-1", 1, True), ("price_list", 1, True), ("revocation", 1, True), ("settings", 1, True)]

    store = CentralStore(stack.central_db)
    store.add_shop(Shop("530100000009", "Jianshui No. 2", "honghe"))
    store.close()
    issued = ops("activation", "issue", *common, "--shop", "530100000009", "--device", "cb-waiting", "--push")
    assert issued.returncode == 0, issued.stderr
    assert json.loads(issued.stdout)["pushed"] is True

    async def retained() -> dict[str, bytes]:
        topics = [p["topic"] for p in printed.values()] + [activation.topic("counterbox/v1", "cb-waiting", "code")]
        found: dict[str, bytes] = {}
        async with MqttLink(host="127.0.0.1", port=stack.broker_port, client_id="a-box-later",
                            subscriptions=topics) as link:
            async with asyncio.timeout(20):
                async for message in link.messages():
                    found[message.topic] = message.payload
                    if len(found) == len(topics):
                        return found
        return found

    found = asyncio.run(retained())
    trusted = {key_id(ops_key): ops_key.public_key()}
    for what, p in printed.items():
        document = documents.decode_document(found[p["topic"]], trusted=trusted)
        assert (document.name, document.version, document.kind) == (p["name"], 1, p["name"].split("/")[0]), what
    assert documents.decode_document(found[printed["revocation"]["topic"]], trusted=trusted).body == {
        "reason": "the shop closed", "grace_seconds": 300}
    code = activation.decode_code(found["counterbox/v1/activation/cb-waiting/code"].decode(), trusted=trusted)
    assert (code.shop, code.device) == ("530100000009", "cb-waiting")


# -- pushes in this process against a broker of their own -------------------------------------------------------

@pytest.fixture
def broker(tmp_path):
    """A Mosquitto of its own, without central: what operations publish waits there, retained."""
    from demo.stack import Stack

    with Stack(tmp_path / "stack") as running:
        running.start_broker()
        yield running


@pytest.fixture
def ops_key(tmp_path):
    key = tmp_path / "ops.key"
    assert ops("keygen", "--ops-key", str(key)).returncode == 0
    return key


def _kept(db, name: str) -> list[tuple[int, dict, bool]]:
    """Each version of ``name`` central keeps: its number, its signed document, whether it was published."""
    from provisioning import documents
    from provisioning.identity import key_id, load_key

    store = CentralStore(db)
    try:
        rows = store.conn.execute("SELECT version, token, published_at IS NOT NULL FROM documents WHERE name = ? "
                                  "ORDER BY version", (name,)).fetchall()
    finally:
        store.close()
    key = load_key(db.parent / "ops.key")
    trusted = {key_id(key): key.public_key()}
    return [(version, documents.decode_document(token if isinstance(token, bytes) else token.encode(),
                                                trusted=trusted), published) for version, token, published in rows]


def _retained(broker, topic: str) -> bytes:
    import asyncio

    from agent.mqtt import MqttLink

    async def read() -> bytes:
        async with MqttLink(host="127.0.0.1", port=broker.broker_port, client_id="a-box-later",
                            subscriptions=[topic]) as link:
            async with asyncio.timeout(10):
                async for message in link.messages():
                    return message.payload

    return asyncio.run(read())


def test_settings_pushed_again_hold_every_key_pushed_so_far_for_their_scope_and_the_latest_value_of_each(
        broker, tmp_path, ops_key):
    db = tmp_path / "central.db"
    CentralStore(db).close()  # central's database, made by its ingest's first start
    common = ["settings", "push", "--central-db", str(db), "--ops-key", str(ops_key),
              "--broker", f"127.0.0.1:{broker.broker_port}"]
    for args in (["--region", "honghe", "--mode-timeout", "300"],
                 ["--region", "honghe", "--timezone", "Asia/Shanghai", "--status-interval", "30"],
                 ["--region", "honghe", "--mode-timeout", "120"],
                 ["--region", "kunming", "--pending-timeout", "90", "--snapshot-interval", "600"]):
        result = ops(*common, *args, "--new-region")  # regions made ahead of their shops
        assert result.returncode == 0, result.stderr
    bodies = [(version, document.scope.as_json(), document.body) for version, document, _ in _kept(db, "settings")]
    assert bodies == [
        (1, {"region": "honghe"}, {"counter": {"mode_timeout": 300.0}}),
        (2, {"region": "honghe"}, {"counter": {"mode_timeout": 300.0, "timezone": "Asia/Shanghai"},
                                   "uplink": {"status_interval": 30.0}}),
        (3, {"region": "honghe"}, {"counter": {"mode_timeout": 120.0, "timezone": "Asia/Shanghai"},
                                   "uplink": {"status_interval": 30.0}}),
        (4, {"region": "kunming"}, {"counter": {"pending_timeout": 90.0}, "uplink": {"snapshot_interval": 600.0}}),
    ]
    from provisioning import documents
    from provisioning.identity import key_id, load_key

    key = load_key(ops_key)
    latest = documents.decode_document(_retained(broker, "counterbox/v1/regions/honghe/docs/settings"),
                                       trusted={key_id(key): key.public_key()})
    assert (latest.version, latest.body) == (3, bodies[2][2])

    # One box's own settings: a document of their own beside its region's, on the box's topic.
    store = CentralStore(db)
    store.register("shop-1", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    result = ops(*common, "--device", "shop-1", "--status-interval", "15")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["name"], printed["version"], printed["topic"]) == (
        documents.DEVICE_SETTINGS, 1, f"counterbox/v1/devices/shop-1/docs/{documents.DEVICE_SETTINGS}")
    [(_, own, _)] = _kept(db, documents.DEVICE_SETTINGS)
    assert (own.scope.as_json(), own.body) == ({"device": "shop-1"}, {"uplink": {"status_interval": 15.0}})


def test_a_push_prints_what_it_signed_and_how_long_a_box_may_apply_it(broker, tmp_path, ops_key):
    import time

    from provisioning.protocol import parse_rfc3339

    db = tmp_path / "central.db"
    CentralStore(db).close()  # central's database, made by its ingest's first start
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    before = time.time()
    push = ["prices", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--broker",
            f"127.0.0.1:{broker.broker_port}", "--region", "honghe", "--currency", "HKD", "--valid-days", "2",
            str(tmp_path / "prices.csv")]
    # No shop is in that region yet: a misspelling, or a region made ahead of its shops? Nothing is signed
    # unless operations say the latter.
    refused = ops(*push)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == ("counterbox-ops: error: no shop or box is registered in region honghe: nothing is "
                              "signed (`counterbox-ops shop list` names the shops and their regions); for a region "
                              "new to central, push with --new-region\n")
    assert _kept(db, "price_list") == []
    result = ops(*push, "--new-region")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    [(version, document, published)] = _kept(db, "price_list")
    assert (version, published) == (1, True)
    assert printed["bytes"] == len(_retained(broker, printed["topic"]))
    assert before + 2 * 86400 - 1 <= parse_rfc3339(printed["expires_at"]) <= time.time() + 2 * 86400 + 1
    assert document.expires_at == pytest.approx(document.issued_at + 2 * 86400)
    assert document.body == {"source": "prices.csv", "currency": "HKD", "items": [
        {"barcode": "6901028075831", "name": "Hongtashan (pack)", "price": 2300}]}
    # Made ahead of its shops: said, and kept for the first box there.
    assert result.stderr == "counterbox-ops: price_list waits at the broker for the first box activated in region honghe\n"
    added = ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3",
                "--region", "honghe")
    assert added.returncode == 0, added.stderr
    again = ops("prices", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--broker",
                f"127.0.0.1:{broker.broker_port}", "--region", "honghe", str(tmp_path / "prices.csv"))
    assert (again.returncode, again.stderr) == (0, "")
    # Central's database restored from a backup older than its last pushes: a box applied version 5, which
    # this database never issued. The push stops and says why; operations number the next past it.
    store = CentralStore(db)
    store.register("cb-3", "key-3", shop="530102100123", region="honghe")
    store.add_events("cb-3", 1, [{"seq": 1, "kind": "document", "body": {"name": "price_list", "version": 5}}])
    store.close()
    push = ["prices", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--broker",
            f"127.0.0.1:{broker.broker_port}", "--region", "honghe", str(tmp_path / "prices.csv")]
    stopped = ops(*push)
    assert (stopped.returncode, stopped.stdout) == (2, "")
    assert stopped.stderr.startswith("counterbox-ops: error: device cb-3 says it applied price_list version 5, but "
                                     "this database issued price_list only up to version 2. If central's database "
                                     "was restored")
    assert [version for version, _, _ in _kept(db, "price_list")] == [1, 2]  # nothing signed
    restored = ops(*push, "--past-boxes")
    assert (restored.returncode, json.loads(restored.stdout)["version"], restored.stderr) == (0, 6, "")


def test_a_push_the_broker_does_not_take_is_kept_signed_and_says_to_push_again(tmp_path, ops_key, monkeypatch):
    from central import ops as operations

    from demo.stack import free_port

    monkeypatch.setattr(operations, "PUBLISH_TIMEOUT", 1.0)
    db, port = tmp_path / "central.db", free_port()
    CentralStore(db).close()  # central's database, made by its ingest's first start
    (tmp_path / "prices.csv").write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    result = ops("prices", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--broker", f"127.0.0.1:{port}",
                 "--region", "honghe", "--new-region", str(tmp_path / "prices.csv"))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"counterbox-ops: error: price_list version 1 is signed and kept, but not published: "
                             f"broker 127.0.0.1:{port} unreachable for 1 s; central's ingest publishes it once it "
                             "is connected to the broker (within the hour), or push again once the broker is back "
                             "(the next version replaces it)\n")
    assert [(version, published) for version, _, published in _kept(db, "price_list")] == [(1, False)]


SETTINGS_PUSH = ["settings", "push", "--central-db", "{db}", "--ops-key", "{key}"]


@pytest.mark.parametrize("command, message", [
    (SETTINGS_PUSH + ["--region", "honghe"], "name at least one setting to push"),
    (SETTINGS_PUSH + ["--region", "honghe", "--mode-timeout", "-1"],
     "settings [counter] mode_timeout must be a number of seconds above 0"),
    (SETTINGS_PUSH + ["--region", "red river", "--mode-timeout", "60"],
     "region 'red river' must be 1 to 64 ASCII letters, digits, '.', '_' or '-'"),
    (SETTINGS_PUSH + ["--device", "shop-9", "--mode-timeout", "60"], "device shop-9 is not registered"),
    (["order", "push", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7", "--order-id", "w/48",
      "{csv}"], "order id 'w/48' must be 1 to 64 ASCII letters, digits, '.', '_' or '-'"),
    (["order", "push", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7", "--order-id", "w48",
      "{bad}"], "{bad}: the first line must be a header naming at least the columns barcode and quantity"),
    (["prices", "push", "--central-db", "{db}", "--ops-key", "{key}", "--region", "honghe", "{bad}"],
     "{bad}: the first line must be a header naming at least the columns barcode and price"),
    (["revoke", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-9"], "device shop-9 is not registered"),
    (["prices", "push", "--central-db", "{db}", "--ops-key", "{db}", "--region", "honghe", "{csv}"],
     "{db} is not an Ed25519 signing key: not an unencrypted PKCS#8 PEM private key"),
    (["prices", "push", "--central-db", "{db}", "--ops-key", "{db}.key", "--region", "honghe", "{csv}"],
     "signing key {db}.key does not exist (create it with 'counterbox-ops keygen')"),
])
def test_a_push_given_wrongly_is_named_and_nothing_is_signed(tmp_path, ops_key, command, message):
    paths = {"db": tmp_path / "central.db", "key": ops_key, "csv": tmp_path / "lines.csv", "bad": tmp_path / "lines.bad.csv"}
    paths["csv"].write_text("barcode,name,price,quantity\n6901028075831,Hongtashan (pack),23.00,5\n")
    paths["bad"].write_text("barcode,name\n6901028075831\n")
    store = CentralStore(paths["db"])
    store.register("shop-7", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    result = ops(*(arg.format(**paths) for arg in command), "--broker", "127.0.0.1:1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"counterbox-ops: error: {message.format(**paths)}\n"
    store = CentralStore(paths["db"])
    try:
        assert store.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
        assert store.device("shop-7").revoked_at is None
    finally:
        store.close()


@pytest.mark.parametrize("command", [
    ["prices", "push", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7", "{csv}"],
    ["order", "push", "--central-db", "{db}", "--ops-key", "{key}", "--device", "shop-7", "--order-id", "w48", "{csv}"],
    SETTINGS_PUSH + ["--device", "shop-7", "--mode-timeout", "60"],
], ids=["prices", "order", "settings"])
def test_a_push_to_a_revoked_box_is_refused_before_anything_is_signed(tmp_path, ops_key, command):
    """It once printed its version and was kept at the broker for a box that never applies it (the box given to
    another shop comes back under a new id: pushing to the old one is an easy mistake)."""
    paths = {"db": tmp_path / "central.db", "key": ops_key, "csv": tmp_path / "lines.csv"}
    paths["csv"].write_text("barcode,name,price,quantity\n6901028075831,Hongtashan (pack),23.00,5\n")
    store = CentralStore(paths["db"])
    store.register("shop-7", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.revoke("shop-7")
    store.close()
    result = ops(*(arg.format(**paths) for arg in command), "--broker", "127.0.0.1:1")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("counterbox-ops: error: device shop-7 was revoked: it applies nothing more")
    store = CentralStore(paths["db"])
    try:
        assert store.conn.execute("SELECT count(*) FROM documents").fetchone() == (0,)
    finally:
        store.close()


def test_an_order_pushed_under_the_id_of_one_the_box_closed_is_refused_before_it_is_signed(tmp_path, ops_key):
    """Next week's order pushed under last week's id said applied, and could never be received."""
    db, csv = tmp_path / "central.db", tmp_path / "lines.csv"
    csv.write_text("barcode,name,quantity\n6901028075848,Hongtashan (carton),5\n")
    store = CentralStore(db)
    store.register("shop-7", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.add_events("shop-7", 1, [{"seq": 1, "kind": "receiving_closed", "body": {"order": "order/w47"}},
                                   {"seq": 2, "kind": "receiving_closed", "body": {"order": "order/w48"}}],
                     journal="a" * 32)
    # Its journal restored onto a replacement box, which goes on from it: the order is closed there too.
    store.register("shop-8", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.add_events("shop-8", 1, [{"seq": 3, "kind": "sale", "body": {}}], journal="a" * 32, base_seq=2)
    store.close()
    push = ["order", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--device", "shop-7", "--broker",
            "127.0.0.1:1", "--order-id"]
    result = ops(*push, "w48", str(csv))
    assert (result.returncode, result.stderr) == (2, "counterbox-ops: error: order w48 was received and closed on "
                                                     "device shop-7 (seq 2): the box takes no copy of it again; a new "
                                                     "order takes a new id\n")
    assert "received and closed" not in ops(*push, "w49", str(csv)).stderr  # a new id: on to the broker
    replaced = ops(*[("shop-8" if arg == "shop-7" else arg) for arg in push], "w48", str(csv))
    assert (replaced.returncode, replaced.stderr) == (2, "counterbox-ops: error: order w48 was received and closed on "
                                                         "device shop-8 (seq 2): the box takes no copy of it again; a "
                                                         "new order takes a new id\n")


def test_a_code_for_a_box_already_registered_is_refused_as_central_would_refuse_its_request(tmp_path, ops_key):
    """It once said pushed, and the box ignored it: active for its shop, or revoked and waiting under a new id."""
    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi").returncode == 0
    store = CentralStore(db)
    store.register("cb-active", KEY_WITH_A_DASH, shop="530100000002", region="honghe")
    store.register("cb-revoked", KEY_WITH_A_DASH, shop="530100000002", region="honghe")
    store.revoke("cb-revoked")
    store.close()
    for device, said in (("cb-active", "device cb-active is already active for shop 530100000002: revoke it first"),
                         ("cb-revoked", "device cb-revoked was revoked: the box waits under a new id")):
        result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop",
                     "530100000001", "--device", device, "--push", "--broker", "127.0.0.1:1")
        assert result.returncode == 2 and result.stderr.startswith(f"counterbox-ops: error: {said}"), result.stderr
    store = CentralStore(db)
    try:
        assert store.conn.execute("SELECT count(*) FROM activation_codes").fetchone() == (0,)
    finally:
        store.close()


def test_keygen_prints_the_key_id_and_public_key_each_box_trusts(tmp_path):
    from provisioning.identity import key_id, load_key, public_key_text

    result = ops("keygen", "--ops-key", str(tmp_path / "ops.key"))
    key = load_key(tmp_path / "ops.key")
    assert json.loads(result.stdout) == {"kid": key_id(key), "public_key": public_key_text(key)}
    again = ops("keygen", "--ops-key", str(tmp_path / "ops.key"))  # never over a key in use
    assert again.returncode == 2 and again.stderr.startswith("counterbox-ops: error: ")
    assert load_key(tmp_path / "ops.key").public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_a_shop_is_registered_by_licence_changed_only_with_replace_and_named_when_given_wrongly(tmp_path):
    db = tmp_path / "central.db"
    add = ["shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi No. 3"]
    assert ops(*add).stdout == "shop 530100000001 (Mengzi No. 3) registered in region -\n"
    assert ops(*add, "--region", "honghe").returncode == 2
    result = ops(*add, "--region", "honghe", "--monitoring", "--replace")
    assert result.stdout == "shop 530100000001 (Mengzi No. 3) registered in region honghe, a monitoring point\n"
    store = CentralStore(db)
    try:
        assert store.shop("530100000001") == Shop("530100000001", "Mengzi No. 3", "honghe", True)
    finally:
        store.close()
    for args, message in ((["--licence", "5301 0001"], "licence '5301 0001' must be 1 to 64 ASCII letters, digits, "
                                                       "'.', '_' or '-'"),
                          (["--licence", "530100000002", "--region", "red/river"],
                           "region 'red/river' must be 1 to 64 ASCII letters, digits, '.', '_' or '-'")):
        result = ops("shop", "add", "--central-db", str(db), "--name", "Jianshui", *args)
        assert result.returncode == 2 and result.stderr == f"counterbox-ops: error: {message}\n"
    # A name people read in central's tables: an escape sequence reached the operator's terminal, a line end
    # split the table's row.
    for name in ("\x1b[31mred", "a\nb", " "):
        result = ops("shop", "add", "--central-db", str(db), "--licence", "530100000003", "--name", name)
        assert result.returncode == 2 and "is not a name: empty, or holding a control character" in result.stderr


def test_boxes_waiting_for_activation_are_listed_newest_first_for_people_and_programs(tmp_path):
    import time

    from provisioning.protocol import rfc3339

    db = tmp_path / "central.db"
    older, newer = time.time() - 900, time.time() - 300
    store = CentralStore(db)
    store.waiting("cb-older", KEY_WITH_A_DASH, "1.2.0", older)
    store.waiting("cb-newer", _key_beginning_with_a_dash(), "1.3.0", newer)
    store.close()
    table = ops("activation", "waiting", "--central-db", str(db))
    assert table.returncode == 0
    assert table.stdout.splitlines() == [
        f"{'cb-newer':24} seen {rfc3339(newer)}  agent 1.3.0",
        f"{'cb-older':24} seen {rfc3339(older)}  agent 1.2.0"]
    rows = [json.loads(line) for line in ops("activation", "waiting", "--central-db", str(db), "--json").stdout.splitlines()]
    assert [(row["device"], row["seen_at"], row["agent_version"]) for row in rows] == [
        ("cb-newer", rfc3339(newer), "1.3.0"), ("cb-older", rfc3339(older), "1.2.0")]


def test_a_code_withdrawn_before_any_box_used_it_is_refused_by_central_and_listed_as_withdrawn(tmp_path, ops_key):
    """A slip lost on the way to the shop activated any box for that shop for up to a year, with nothing to stop it."""
    import time

    from central.errors import ActivationRefused

    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi").returncode == 0
    codes = []
    for _ in range(2):
        result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001")
        codes.append(json.loads(result.stdout)["code"])
    lost, used = codes
    # The second, while the first is open: issued, and said, for each open code activates a box for the shop.
    assert result.returncode == 0 and result.stderr == (
        f"counterbox-ops: warning: shop 530100000001 already has 1 open code ({lost}), each of which activates a box "
        "for it until it expires: withdraw one lost or no longer wanted (counterbox-ops activation withdraw)\n")
    store = CentralStore(db)
    tokens = dict(store.conn.execute("SELECT code_id, token FROM activation_codes").fetchall())
    store.activate(used, tokens[used], device_id="cb-site", public_key=KEY_WITH_A_DASH, now=time.time())
    store.close()
    withdraw = ["activation", "withdraw", "--central-db", str(db), "--code"]
    assert ops(*withdraw, lost).stdout == f"code {lost} withdrawn: central refuses it from now on\n"
    assert ops(*withdraw, lost).returncode == 0  # again: it stays withdrawn, from the first time
    for code, said in ((used, f"code {used} was used by device cb-site: revoke the box instead"),
                       ("no-such", "central never issued a code no-such")):
        refused = ops(*withdraw, code)
        assert (refused.returncode, refused.stderr) == (2, f"counterbox-ops: error: {said}\n")
    store = CentralStore(db)
    try:
        with pytest.raises(ActivationRefused, match="the code was withdrawn by operations"):
            store.activate(lost, tokens[lost], device_id="cb-finder", public_key=KEY_WITH_A_DASH, now=time.time())
        assert store.device("cb-finder") is None
    finally:
        store.close()
    rows = {row["code"]: row for row in map(json.loads, ops("activation", "codes", "--central-db", str(db),
                                                             "--json").stdout.splitlines())}
    assert (rows[lost]["state"], rows[used]["state"]) == ("withdrawn", "used")
    assert "withdrawn " in ops("activation", "codes", "--central-db", str(db)).stdout


def test_shop_list_names_each_shop_with_the_boxes_serving_it_and_marks_a_monitoring_point_left_without_one(tmp_path):
    """A monitoring point whose box left must be replaced at once: nothing showed which had none."""
    db = tmp_path / "central.db"
    for licence, name, region, monitoring in (("530100000001", "蒙自三号店", "honghe", True),
                                              ("530100000002", "Gejiu No. 1", "honghe", False),
                                              ("530100000003", "Kunming No. 9", "kunming", True)):
        added = ops("shop", "add", "--central-db", str(db), "--licence", licence, "--name", name, "--region", region,
                    *(["--monitoring"] if monitoring else []), *(["--new-region"] if region == "kunming" else []))
        assert added.returncode == 0, added.stderr
    store = CentralStore(db)
    store.register("cb-old", KEY_WITH_A_DASH, shop="530100000003", region="kunming")
    store.revoke("cb-old")  # left: the shop has no box now
    store.register("cb-one", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    assert ops("shop", "list", "--central-db", str(db)).stdout.splitlines() == [
        "530100000001     monitoring point honghe     蒙自三号店: cb-one",
        "530100000002     general          honghe     Gejiu No. 1: NO BOX",
        "530100000003     monitoring point kunming    Kunming No. 9: NO BOX: replace it at once"]
    rows = [json.loads(line) for line in ops("shop", "list", "--central-db", str(db), "--region", "honghe",
                                             "--json").stdout.splitlines()]
    assert rows == [{"licence": "530100000001", "name": "蒙自三号店", "region": "honghe", "monitoring": True,
                     "devices": ["cb-one"], "left_at": None},
                    {"licence": "530100000002", "name": "Gejiu No. 1", "region": "honghe", "monitoring": False,
                     "devices": [], "left_at": None}]
    # Its stock asked for: said, where an empty line read as a report that failed.
    from central.cli import main as central_main

    from .harness import run_main

    stock = run_main(central_main, ["--db", str(db), "report", "stock", "--shop", "530100000003"])
    assert (stock.returncode, stock.stdout) == (0, "No box serves the shops asked for now: no shelf is known "
                                                   "(counterbox-ops shop list)\n")


def test_a_shop_that_left_is_listed_as_gone_its_history_kept_and_no_code_issued_or_honoured_for_it(tmp_path, ops_key):
    """A monitoring point replaced by another shop was marked "NO BOX: replace it at once" for ever; the one way
    to quiet it (registering it again as a general shop) took it out of past weeks' monitoring reports."""
    import time

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central.errors import ActivationRefused
    from provisioning import activation
    from provisioning.activation import ActivationCode

    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000003", "--name", "Kunming No. 9",
               "--region", "kunming", "--monitoring").returncode == 0
    store = CentralStore(db)
    store.register("cb-old", KEY_WITH_A_DASH, shop="530100000003", region="kunming")
    token = activation.encode_code(ActivationCode("c-early", "530100000003", "kunming", True, time.time(),
                                                  time.time() + 3600), key=Ed25519PrivateKey.generate(), kid="ops-1")
    store.add_code("c-early", shop="530100000003", token=token, device=None, issued_at=time.time(),
                   expires_at=time.time() + 3600)
    store.close()
    served = ops("shop", "leave", "--central-db", str(db), "--licence", "530100000003")
    assert (served.returncode, served.stderr) == (2, "counterbox-ops: error: shop 530100000003 is still served by "
                                                     "cb-old: revoke it first (counterbox-ops revoke), so that what it "
                                                     "holds is handed in\n")
    store = CentralStore(db)
    store.revoke("cb-old")
    store.close()
    left = ops("shop", "leave", "--central-db", str(db), "--licence", "530100000003")
    assert left.returncode == 0, left.stderr
    assert ops("shop", "list", "--central-db", str(db)).stdout == (
        f"530100000003     monitoring point kunming    Kunming No. 9: left {time.strftime('%Y-%m-%d')}\n")
    [row] = [json.loads(line) for line in ops("shop", "list", "--central-db", str(db), "--json").stdout.splitlines()]
    assert row["monitoring"] is True and row["left_at"] is not None  # its kind as it was: its past reports stand
    issued = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000003")
    assert (issued.returncode, issued.stderr) == (2, "counterbox-ops: error: shop 530100000003 has left: no code is "
                                                     "issued for it (`counterbox-ops shop add --replace` registers it "
                                                     "again)\n")
    registered = ops("register", "--central-db", str(db), "--device", "cb-new", f"--public-key={KEY_WITH_A_DASH}",
                     "--shop", "530100000003")  # by hand, as before activation codes: refused alike
    assert (registered.returncode, registered.stderr) == (2, "counterbox-ops: error: shop 530100000003 has left: no "
                                                             "box is registered for it (`counterbox-ops shop add "
                                                             "--replace` registers it again)\n")
    store = CentralStore(db)
    try:
        with pytest.raises(ActivationRefused, match="shop 530100000003 has left; its codes activate no box"):
            store.activate("c-early", token, device_id="cb-next", public_key="key-next", now=time.time())
        store.add_shop(Shop("530100000003", "Kunming No. 9", "kunming", True), replace=True)  # trading again
        assert store.shop("530100000003").left_at is None
    finally:
        store.close()
    assert ops("shop", "leave", "--central-db", str(db), "--licence", "530100000099").stderr == (
        "counterbox-ops: error: shop 530100000099 is not registered\n")


def test_the_codes_issued_say_for_people_and_programs_which_were_used_by_which_box_and_which_are_open(tmp_path,
                                                                                                     ops_key):
    import time

    db = tmp_path / "central.db"
    for licence, name in (("530100000001", "Mengzi"), ("530100000002", "Jianshui")):
        assert ops("shop", "add", "--central-db", str(db), "--licence", licence, "--name", name).returncode == 0
    issued = {}
    for name, shop, extra in (("used", "530100000001", []), ("open", "530100000001", ["--device", "cb-remote"]),
                              ("other shop", "530100000002", [])):
        result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", shop,
                     "--slip", str(tmp_path / f"{shop}.png"), *extra)
        assert result.returncode == 0, result.stderr
        issued[name] = json.loads(result.stdout)
        time.sleep(0.01)  # issued one after another: newest first
    store = CentralStore(db)
    try:
        tokens = dict(store.conn.execute("SELECT code_id, token FROM activation_codes").fetchall())
        used = issued["used"]["code"]
        store.activate(used, tokens[used], device_id="cb-site", public_key=KEY_WITH_A_DASH, now=1_764_000_300.0)
        # Issued an hour ago for an hour: expired, never used.
        store.add_code("old-code", shop="530100000001", token="t", device=None, issued_at=time.time() - 3600,
                       expires_at=time.time() - 1)
    finally:
        store.close()
    rows = [json.loads(line) for line in ops("activation", "codes", "--central-db", str(db), "--json").stdout.splitlines()]
    assert [(row["code"], row["shop"], row["state"], row["used_by"]) for row in rows] == [
        (issued["other shop"]["code"], "530100000002", "open", None),
        (issued["open"]["code"], "530100000001", "open", None),
        (issued["used"]["code"], "530100000001", "used", "cb-site"),
        ("old-code", "530100000001", "expired", None)]
    assert rows[2]["used_at"] == "2025-11-24T16:05:00.000Z"
    assert rows[1]["expires_at"] == issued["open"]["expires_at"] and rows[1]["device"] == "cb-remote"
    table = ops("activation", "codes", "--central-db", str(db), "--shop", "530100000001")
    assert table.returncode == 0
    assert table.stdout.splitlines() == [
        f"{issued['open']['code']:24} shop 530100000001     open until {issued['open']['expires_at']}, for device cb-remote",
        f"{used:24} shop 530100000001     used 2025-11-24T16:05:00.000Z by cb-site",
        f"{'old-code':24} shop 530100000001     expired {rows[3]['expires_at']}, unused (was for any new box)"]
    printed = ops("activation", "codes", "--central-db", str(db)).stdout + json.dumps(rows)
    assert not [token for token in tokens.values() if token in printed]  # a code unused activates a box: never shown
    unknown = ops("activation", "codes", "--central-db", str(db), "--shop", "530100000404")
    assert (unknown.returncode, unknown.stdout, unknown.stderr) == (
        2, "", "counterbox-ops: error: shop 530100000404 is not registered (counterbox-ops shop add)\n")


@pytest.mark.parametrize("args, message", [
    (["--push"], "--push sends the code to one waiting box: name it with --device"),
    (["--shop", "530100000404"], "shop 530100000404 is not registered (counterbox-ops shop add)"),
])
def test_an_activation_code_given_wrongly_is_named_and_not_issued(tmp_path, ops_key, args, message):
    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi").returncode == 0
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001",
                 *args)
    assert result.returncode == 2 and result.stderr == f"counterbox-ops: error: {message}\n"
    store = CentralStore(db)
    try:
        assert store.conn.execute("SELECT count(*) FROM activation_codes").fetchone() == (0,)
    finally:
        store.close()


def test_a_code_the_broker_does_not_take_is_issued_and_says_it_was_not_pushed(tmp_path, ops_key, monkeypatch):
    import time

    from central import ops as operations
    from demo.stack import free_port

    monkeypatch.setattr(operations, "PUBLISH_TIMEOUT", 1.0)
    db, port = tmp_path / "central.db", free_port()
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi").returncode == 0
    store = CentralStore(db)
    store.waiting("cb-waiting", KEY_WITH_A_DASH, "1.2.0", time.time() - 60)
    store.close()
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001",
                 "--device", "cb-waiting", "--push", "--broker", f"127.0.0.1:{port}")
    store = CentralStore(db)
    try:
        [(code_id, device)] = store.conn.execute("SELECT code_id, device FROM activation_codes").fetchall()
    finally:
        store.close()
    assert device == "cb-waiting"
    assert result.returncode == 2 and result.stderr == (
        f"counterbox-ops: error: code {code_id} issued, but not pushed: broker 127.0.0.1:{port} unreachable for 1 s\n")


def test_a_pushed_code_is_bound_to_its_box_and_valid_for_the_hours_given(broker, tmp_path, ops_key):
    import time

    from provisioning import activation
    from provisioning.identity import key_id, load_key
    from provisioning.protocol import parse_rfc3339

    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi",
               "--region", "honghe").returncode == 0
    store = CentralStore(db)
    store.waiting("cb-waiting", KEY_WITH_A_DASH, "1.2.0", time.time())  # its hello, heard
    store.close()
    before = time.time()
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001",
                 "--device", "cb-waiting", "--push", "--valid-hours", "5", "--broker", f"127.0.0.1:{broker.broker_port}")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    printed = json.loads(result.stdout)
    assert (printed["shop"], printed["device"], printed["slip"], printed["pushed"]) == (
        "530100000001", "cb-waiting", None, True)
    assert before + 5 * 3600 - 1 <= parse_rfc3339(printed["expires_at"]) <= time.time() + 5 * 3600 + 1
    key = load_key(ops_key)
    code = activation.decode_code(_retained(broker, "counterbox/v1/activation/cb-waiting/code").decode(),
                                  trusted={key_id(key): key.public_key()})
    assert (code.code_id, code.shop, code.region, code.device, code.kid) == (
        printed["code"], "530100000001", "honghe", "cb-waiting", key_id(key))
    assert code.expires_at - code.issued_at == 5 * 3600
    # An id no box has said it waits under (a typo, as a rule): issued and pushed, and said.
    typo = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001",
               "--device", "cb-wiating", "--push", "--broker", f"127.0.0.1:{broker.broker_port}")
    assert typo.returncode == 0 and json.loads(typo.stdout)["pushed"] is True
    assert "counterbox-ops: warning: no box cb-wiating has said it waits for activation" in typo.stderr


def test_an_order_pushed_to_a_box_holds_its_id_and_lines_and_a_revocation_its_reason_and_grace(broker, tmp_path,
                                                                                                ops_key):
    db = tmp_path / "central.db"
    store = CentralStore(db)
    store.register("shop-1", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    (tmp_path / "order.csv").write_text("barcode,name,quantity\n6901028075848,Hongtashan (carton),5\n")
    common = ["--central-db", str(db), "--ops-key", str(ops_key), "--broker", f"127.0.0.1:{broker.broker_port}",
              "--device", "shop-1"]
    assert ops("order", "push", *common, "--order-id", "W48-1", "--valid-days", "3",
               str(tmp_path / "order.csv")).returncode == 0
    assert ops("revoke", *common, "--grace-minutes", "0.5").returncode == 0
    [(_, order, _)] = _kept(db, "order/W48-1")
    assert (order.kind, order.scope.as_json(), order.body) == ("order", {"device": "shop-1"}, {
        "order_id": "W48-1", "lines": [{"barcode": "6901028075848", "name": "Hongtashan (carton)", "quantity": 5}]})
    assert order.expires_at == pytest.approx(order.issued_at + 3 * 86400)
    [(_, revocation, _)] = _kept(db, "revocation")
    assert revocation.body == {"reason": "", "grace_seconds": 30}
    # A box takes a revocation past its expiry all the same; the document says the longest span ops signs.
    assert revocation.expires_at == pytest.approx(revocation.issued_at + 3650 * 86400)


def test_a_code_issued_for_some_hours_is_refused_by_central_once_they_are_past(tmp_path, ops_key):
    import time

    from central.errors import ActivationRefused

    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530100000001", "--name", "Mengzi").returncode == 0
    before = time.time()
    result = ops("activation", "issue", "--central-db", str(db), "--ops-key", str(ops_key), "--shop", "530100000001",
                 "--valid-hours", "2", "--slip", str(tmp_path / "slip.png"),
                 "--password-file", str(tmp_path / "no-broker-needed"))  # a slip needs no broker
    assert result.returncode == 0, result.stderr
    code_id = json.loads(result.stdout)["code"]
    store = CentralStore(db)
    try:
        [(token,)] = store.conn.execute("SELECT token FROM activation_codes").fetchall()
        with pytest.raises(ActivationRefused, match="^the code has expired$"):
            store.activate(code_id, token, device_id="cb-late", public_key=KEY_WITH_A_DASH, now=before + 2 * 3600 + 5)
        shop = store.activate(code_id, token, device_id="cb-on-time", public_key=KEY_WITH_A_DASH, now=time.time())
        assert shop.licence == "530100000001"
    finally:
        store.close()


def test_a_price_lists_file_name_is_kept_without_control_characters(broker, tmp_path, ops_key):
    db, csv = tmp_path / "central.db", tmp_path / "week\t48\x1b[2J.csv"
    CentralStore(db).close()  # central's database, made by its ingest's first start
    csv.write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    result = ops("prices", "push", "--central-db", str(db), "--ops-key", str(ops_key), "--broker",
                 f"127.0.0.1:{broker.broker_port}", "--region", "honghe", "--new-region", str(csv))
    assert result.returncode == 0, result.stderr
    [(_, document, _)] = _kept(db, "price_list")
    assert document.body["source"] == "week?48?[2J.csv"


def test_activation_mistakes_are_named_in_full(tmp_path, ops_key):
    db = tmp_path / "central.db"
    for args, message in (
            (["--ops-key", str(ops_key), "--device", "cb a"],
             "device id 'cb a' must be 1 to 64 ASCII letters, digits, '-', '_' or '.'"),
            (["--ops-key", str(tmp_path / "none.key")],
             f"signing key {tmp_path / 'none.key'} does not exist (create it with 'counterbox-ops keygen')")):
        result = ops("activation", "issue", "--central-db", str(db), "--shop", "530100000001", *args)
        assert (result.returncode, result.stderr) == (2, f"counterbox-ops: error: {message}\n")


def test_the_control_sheet_command_embeds_the_font_given(tmp_path):
    import reportlab

    path, font = tmp_path / "controls.pdf", str(Path(reportlab.__file__).parent / "fonts" / "Vera.ttf")
    result = ops("controls", "sheet", str(path), "--font", font)
    assert result.returncode == 0, result.stderr
    assert b"BitstreamVeraSans" in path.read_bytes() and b"WenQuanYi" not in path.read_bytes()


@pytest.mark.parametrize("command, option", [(REVOKE, "--grace-minutes=0"), (PUSH_PRICES, "--valid-days=0.5"),
                                             (PUSH_PRICES, "--valid-days=3650"), (REVOKE, "--grace-minutes=43200")])
def test_a_length_of_time_at_the_edges_of_its_range_is_taken(tmp_path, ops_key, command, option, monkeypatch):
    """No grace (a box erased as soon as it has the revocation), half a day, and each range's most."""
    from central import ops as operations

    monkeypatch.setattr(operations, "PUBLISH_TIMEOUT", 0.2)  # no broker here: taken means signed and kept
    paths = {"db": tmp_path / "central.db", "key": ops_key, "csv": tmp_path / "lines.csv"}
    paths["csv"].write_text("barcode,name,price\n6901028075831,Hongtashan (pack),23.00\n")
    store = CentralStore(paths["db"])
    store.register("shop-7", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    result = ops(*(arg.format(**paths) for arg in command), option, "--broker", "127.0.0.1:1")
    assert "is signed and kept, but not published" in result.stderr, result.stderr


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: command"),
    (["prices", "push", "--central-db", "c.db", "--ops-key", "k", "prices.csv"],
     "one of the arguments --device --region is required"),
    (["revoke", "--central-db", "c.db", "--ops-key", "k", "--region", "honghe"], "one of the arguments --device is required"),  # one box, never a region
])
def test_a_command_line_missing_what_it_needs_is_refused_by_name(args, message):
    result = ops(*args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_an_identity_file_saved_in_another_encoding_is_named_as_not_what_identity_show_prints(tmp_path):
    """Copied through an editor that saved it as UTF-16 (with its byte-order mark)."""
    identity = tmp_path / "identity.json"
    identity.write_bytes(json.dumps({"device": "shop-7", "public_key": KEY_WITH_A_DASH}).encode("utf-16"))
    result = ops("register", "--central-db", str(tmp_path / "c.db"), "--identity", str(identity))
    assert (result.returncode, result.stderr) == (
        2, f"counterbox-ops: error: {identity} is not what 'counterbox identity show' prints\n")


def test_an_identity_file_saved_with_a_utf8_byte_order_mark_registers(tmp_path):
    """As Windows' Notepad saves UTF-8: the configuration and CSV files take one, and so does this."""
    identity = tmp_path / "identity.json"
    identity.write_bytes(json.dumps({"device": "shop-7", "public_key": KEY_WITH_A_DASH}).encode("utf-8-sig"))
    result = ops("register", "--central-db", str(tmp_path / "c.db"), "--identity", str(identity))
    assert result.returncode == 0, result.stderr
    store = CentralStore(tmp_path / "c.db")
    try:
        assert store.device("shop-7").public_key == KEY_WITH_A_DASH
    finally:
        store.close()


def test_a_shop_in_a_region_central_does_not_know_is_refused_naming_the_nearest_it_knows(tmp_path):
    """A misspelt region stranded the shop's box: no price list ever reached it, and it sold everything at 0.00."""
    db = tmp_path / "central.db"
    add = ["shop", "add", "--central-db", str(db), "--name", "Mengzi No. 3"]
    first = ops(*add, "--licence", "530100000001", "--region", "honghe")  # a new database's first region
    assert (first.returncode, first.stderr) == (0, "")
    assert ops(*add, "--licence", "530100000002", "--region", "kunming", "--new-region").returncode == 0
    misspelt = ops(*add, "--licence", "530100000003", "--region", "kumning")
    assert (misspelt.returncode, misspelt.stdout) == (2, "")
    assert misspelt.stderr == ("counterbox-ops: error: no shop or box is registered in region kumning (did you mean "
                               "kunming?): the shop is not registered (`counterbox-ops shop list` names the shops and "
                               "their regions); for a region new to central, register it with --new-region\n")
    register = ["register", "--central-db", str(db), "--device", "cb-by-hand", f"--public-key={KEY_WITH_A_DASH}"]
    by_hand = ops(*register, "--region", "kumning")  # a box registered by hand, of no shop: the same check
    assert (by_hand.returncode, by_hand.stderr) == (2, "counterbox-ops: error: no shop or box is registered in region "
                                                       "kumning (did you mean kunming?): the device is not registered "
                                                       "(`counterbox-ops shop list` names the shops and their regions); "
                                                       "for a region new to central, register it with --new-region\n")
    assert ops(*register, "--region", "kunming").returncode == 0
    unlike = ops(*add, "--licence", "530100000003", "--region", "yuxi")
    assert unlike.returncode == 2 and "(did you mean" not in unlike.stderr
    store = CentralStore(db)
    try:
        assert store.shop("530100000003") is None
    finally:
        store.close()
    assert ops(*add, "--licence", "530100000003", "--region", "kunming").returncode == 0
    assert ops(*add, "--licence", "530100000004").returncode == 0  # a shop of no region yet


def test_a_shop_moved_to_another_region_names_the_boxes_the_change_does_not_reach(tmp_path):
    db = tmp_path / "central.db"
    assert ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3",
               "--region", "honghe").returncode == 0
    store = CentralStore(db)
    store.register("cb-box-1", KEY_WITH_A_DASH, shop="530102100123", region="honghe")
    store.close()
    renamed = ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3 (new)",
                  "--region", "honghe", "--replace")
    assert (renamed.returncode, renamed.stderr) == (0, "")  # a new name reaches nothing on the box: nothing to say
    moved = ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3",
                "--region", "kunming", "--monitoring", "--replace", "--new-region")
    assert moved.returncode == 0
    assert moved.stderr == ("counterbox-ops: warning: the box cb-box-1 of this shop keeps the region and monitoring of "
                            "its activation: revoke it and activate it again for the change to reach it\n")
    store = CentralStore(db)
    store.register("cb-box-2", _key_beginning_with_a_dash(), shop="530102100123", region="kunming")
    store.close()
    back = ops("shop", "add", "--central-db", str(db), "--licence", "530102100123", "--name", "Mengzi No. 3",
               "--region", "honghe", "--replace")
    assert back.stderr == ("counterbox-ops: warning: the boxes cb-box-1, cb-box-2 of this shop keep the region and "
                           "monitoring of their activation: revoke each and activate it again for the change to reach it\n")


def test_revoking_at_once_on_a_broker_with_no_access_control_says_the_revocation_went_and_the_cut_off_did_not(stack):
    """On the development broker it timed out with 'the broker's access control did not answer', after the
    revocation had gone: an operator could not tell what was done."""
    stack.ops_public_key()
    store = CentralStore(stack.central_db)
    store.register("shop-7", KEY_WITH_A_DASH, shop="530100000001", region="honghe")
    store.close()
    result = stack.ops_command("revoke", "--central-db", str(stack.central_db), "--ops-key", str(stack.ops_key),
                               "--broker", f"127.0.0.1:{stack.broker_port}", "--device", "shop-7", "--now")
    assert result.returncode == 2
    assert result.stderr.startswith("counterbox-ops: error: device shop-7 is revoked and its revocation pushed, but "
                                    "it is NOT cut off at the broker: the broker's access control did not answer")
    assert result.stderr.endswith("(if this is the development broker: it has no access control to cut a box off with)\n")
    store = CentralStore(stack.central_db)
    try:
        assert store.device("shop-7").revoked_at is not None
        assert store.latest_document("revocation", json.dumps({"device": "shop-7"})) is not None
    finally:
        store.close()
