"""Packaging: a wheel built from the checkout installs both commands, the man pages,
the rule set, the unit and the example configuration; the version lives in one place
(mptcp_proxy/__init__.py) and the changelog's newest entry names it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mptcp_proxy

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cp = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                         "--no-build-isolation", "-w", str(out), str(ROOT)],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    (whl,) = out.glob("mptcp_proxy-*.whl")
    return whl


def test_version_in_one_place():
    assert re.fullmatch(r"\d+\.\d+\.\d+", mptcp_proxy.__version__)
    cfg = (ROOT / "setup.cfg").read_text()
    assert "version = attr: mptcp_proxy.__version__" in cfg
    assert not re.search(r"^version\s*=\s*\d", cfg, re.M)
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert newest and newest.group(1) == mptcp_proxy.__version__


def test_wheel_contents(wheel):
    v = mptcp_proxy.__version__
    assert wheel.name.startswith(f"mptcp_proxy-{v}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("mptcp_proxy/tables/endhost.toml", "mptcp_proxy/tables/anchor.toml",
              "mptcp_proxy/data/mptcp-proxy.service", "mptcp_proxy/data/mptcp-proxy.conf",
              "mptcp_proxy/ctl.py", "mptcp_proxy/ctltable.py",
              f"mptcp_proxy-{v}.data/data/share/man/man8/mptcp-proxy.8",
              f"mptcp_proxy-{v}.data/data/share/man/man8/mptcpctl.8"):
        assert f in names, f
    eps = zipfile.ZipFile(wheel).read(f"mptcp_proxy-{v}.dist-info/entry_points.txt").decode()
    assert "mptcp-proxy = mptcp_proxy.daemon:main" in eps
    assert "mptcpctl = mptcp_proxy.ctl:main" in eps


def test_installed_wheel_runs(wheel, tmp_path):
    prefix = tmp_path / "prefix"
    # --ignore-installed: without it pip uninstalls the running checkout's own copy first
    cp = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                         "--ignore-installed", "--prefix", str(prefix), str(wheel)],
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    site = next(prefix.glob("lib/python3*/site-packages"))
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("MPTCP_PROXY_SOCKET", None)
    for cmd, out in (("mptcp-proxy", f"mptcp-proxy {mptcp_proxy.__version__}"),
                     ("mptcpctl", f"mptcpctl {mptcp_proxy.__version__}")):
        cp = subprocess.run([str(prefix / "bin" / cmd), "--version"], capture_output=True,
                            text=True, timeout=60, env=env, cwd=tmp_path)
        assert (cp.returncode, cp.stdout.strip()) == (0, out), cp.stderr
    # the installed copy is the one that ran, and it finds its rule set and unit
    cp = subprocess.run([sys.executable, "-c",
                         "import mptcp_proxy.rules as r, mptcp_proxy.service as s; "
                         "print(r.TABLES_DIR); print(len(s.data_text('mptcp-proxy.service')))"],
                        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    tables, unit_len = cp.stdout.split()
    assert Path(tables).is_relative_to(site) and (Path(tables) / "endhost.toml").exists()
    assert int(unit_len) > 500
    for page in ("mptcp-proxy.8", "mptcpctl.8"):
        installed = prefix / "share" / "man" / "man8" / page
        assert installed.read_text() == (ROOT / "man" / page).read_text()
