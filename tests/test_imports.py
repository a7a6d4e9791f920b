"""What the agent's process imports: only what runs on a box (each module costs the box memory).

Each test starts a fresh interpreter: this one has imported everything the suite uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Central's and the demo's code, the operations tooling's libraries, and what paho would pull in for
# HTTP proxies (http.client, email): none of it runs on a box.
NOT_ON_A_BOX = ("central", "demo", "sqlite_utils", "joserfc", "reportlab", "http", "email", "_uuid")


def _python(code: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                          env={**os.environ, **env})
    return json.loads(done.stdout)


def test_the_agents_process_imports_nothing_that_does_not_run_on_a_box():
    modules = _python("import sys, json, agent.cli, agent.daemon, agent.scanners; print(json.dumps(sorted(sys.modules)))")
    assert "paho.mqtt.client" in modules  # the imports did happen
    assert [m for m in modules if m.split(".")[0] in NOT_ON_A_BOX] == []
    assert "cryptography.hazmat.primitives.serialization" not in modules  # every key type: the key file is read directly


def test_a_module_paho_imports_for_proxies_is_the_real_one_once_it_is_used():
    seen = _python(
        "import sys, json, agent.mqtt, urllib.request\n"
        "before = 'http.client' in sys.modules\n"
        "from urllib.request import getproxies, Request\n"
        "print(json.dumps({'before': before, 'after': 'http.client' in sys.modules,\n"
        "                  'proxies': getproxies(), 'request': Request('http://shop.example/').host,\n"
        "                  'bypass': urllib.request.proxy_bypass('broker.example')}))",
        http_proxy="http://proxy.example:3128", no_proxy="broker.example")
    assert seen["before"] is False
    assert seen["after"] is True
    assert seen["proxies"]["http"] == "http://proxy.example:3128"
    assert seen["request"] == "shop.example"
    assert seen["bypass"]


def test_a_us_layout_scanner_needs_no_libxkbcommon_and_another_layout_loads_it():
    seen = _python(
        "import sys, json\n"
        "from evdev import ecodes\n"
        "from drivers.keymap import load_keymap\n"
        "us = load_keymap('us').new_state().text(ecodes.KEY_A)\n"
        "before = 'xkbcommon' in sys.modules\n"
        "de = load_keymap('de').new_state().text(ecodes.KEY_Y)\n"
        "print(json.dumps({'us': us, 'before': before, 'de': de, 'after': 'xkbcommon' in sys.modules}))")
    assert seen == {"us": "a", "before": False, "de": "z", "after": True}
