import subprocess, sys, re, time, requests
from tests.conftest import gateway_config, wait_for
import yaml
def test_dbg(fresh_clusters, tmp_path):
    cfg = gateway_config(tmp_path, fresh_clusters, groups={"adhoc-1": "adhoc"})
    (tmp_path/"rules").mkdir()
    (tmp_path/"g.yaml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path/"log", "wb")
    p = subprocess.Popen([sys.executable, "/tmp/dbgrun.py", "serve", "--config", str(tmp_path/"g.yaml")], stdout=log, stderr=subprocess.STDOUT)
    port = wait_for(lambda: (m := re.search(r"listening on [^:]+:(\d+)", (tmp_path/"log").read_text())) and int(m.group(1)))
    time.sleep(1)
    print(requests.get(f"http://127.0.0.1:{port}/v1/info").status_code)
    time.sleep(0.5)
    p.terminate(); p.wait()
    print((tmp_path/"log").read_text()[-3000:])
