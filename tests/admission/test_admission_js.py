"""The JavaScript client (trino-client from npm) accepts a held query whose id changes at
dispatch. Needs node and npm; the package is installed into a cache folder once."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.admission.test_admission_e2e import capped, held_count, start_blocker
from tests.conftest import REPO, wait_for

CACHE = REPO / ".cache" / "js-client"
SCRIPT = """
const {Trino, BasicAuth} = require('trino-client');
(async () => {
  const trino = Trino.create({server: process.argv[2], catalog: 'tpch', schema: 'tiny',
                              auth: new BasicAuth('js-user')});
  const iter = await trino.query("SELECT n FROM numbers WHERE n <= 250 ORDER BY n");
  const ids = [], rows = [];
  let error = null;
  for await (const r of iter) {
    ids.push(r.id);
    if (r.data) rows.push(...r.data);
    if (r.error) error = r.error;
  }
  console.log(JSON.stringify({ids, rows, error}));
})().catch(e => { console.log(JSON.stringify({fatal: String(e)})); process.exit(1); });
"""


@pytest.fixture(scope="module")
def js_client() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the JavaScript client test")
    if not (CACHE / "node_modules" / "trino-client").exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        # --prefer-offline: npm's cache answers when it can. The timeout stays well under the
        # test timeout (300 s): a registry npm cannot reach (no proxy or CA settings in the
        # environment) makes npm retry for minutes, and the skip must say so, not time out.
        try:
            r = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefer-offline",
                                "--prefix", str(CACHE), "trino-client@0.2.9"],
                               capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            pytest.skip("cannot install trino-client from npm: no answer in 150 s (registry, proxy or "
                        "CA settings: NODE_EXTRA_CA_CERTS, npm_config_*)")
        if r.returncode != 0:
            pytest.skip(f"cannot install trino-client from npm: {r.stderr[-500:]}")
    script = CACHE / "held.js"
    script.write_text(SCRIPT)
    return script


def test_js_client_follows_a_held_query_through_dispatch(js_client, fresh_clusters, gateway_factory, tmp_path):
    gw = gateway_factory(capped(tmp_path, fresh_clusters))
    etl = fresh_clusters["etl-1"]
    res: dict = {}
    blocker = start_blocker(gw, etl, res, 3)
    proc = subprocess.Popen(["node", str(js_client), gw.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=js_client.parent,
                            env={**os.environ, "NODE_PATH": str(CACHE / "node_modules")})
    wait_for(lambda: held_count(gw) == 1, timeout=20, message="the JavaScript client's query held")
    stdout, stderr = proc.communicate(timeout=60)
    blocker.join(30)
    assert proc.returncode == 0, stdout + stderr
    doc = json.loads(stdout.strip().splitlines()[-1])
    assert doc["error"] is None
    assert doc["rows"] == [[n] for n in range(1, 251)]
    # it was held (seen above), and it ended under the cluster's own id
    assert not doc["ids"][-1].endswith("_gtw01")
    assert doc["ids"][-1] in [q["queryId"] for q in etl.queries()]
