"""python -m onecollector_logging: demo, collector and send."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import requests
from support import KEY, TENANT

from onecollector_logging.__main__ import _parser
from onecollector_logging.testing import Answer, LocalCollector

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onecollector_logging", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_collector_refuses_a_bad_port_and_an_address_it_cannot_use() -> None:
    with LocalCollector() as taken:
        in_use = str(taken.port)
        bad_port = _cli("collector", "--port", "99999")
        busy = _cli("collector", "--host", "127.0.0.1", "--port", in_use)

    assert bad_port.returncode == 2
    assert "a port is 0 to 65535" in bad_port.stderr
    assert busy.returncode == 1
    assert busy.stderr.startswith(f"error: cannot listen on 127.0.0.1 port {in_use}")
    assert "Traceback" not in bad_port.stderr + busy.stderr


def test_demo_shows_every_workload_record_accepted() -> None:
    result = _cli("demo")

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "records logged:            9" in lines
    assert "events accepted:           9" in lines
    assert "events rejected:           0" in lines
    assert "Contoso.App.OrderShipped" in result.stdout
    assert '"exceptionType": "KeyError"' in result.stdout


def test_send_prints_the_collectors_verdict(onecollector: LocalCollector) -> None:
    result = _cli(
        "send",
        "--instrumentation-key",
        KEY,
        "--endpoint",
        onecollector.endpoint,
        "--name",
        "Contoso.Probe.Check",
        "--data",
        '{"answer": 42}',
    )

    assert result.returncode == 0, result.stderr
    assert "status:          200" in result.stdout
    assert '{"acc":1}' in result.stdout
    assert KEY not in result.stdout and TENANT in result.stdout
    assert onecollector.events[0]["data"]["answer"] == 42
    assert onecollector.events[0]["name"] == "Contoso.Probe.Check"


def test_send_shows_a_rejection_with_its_collector_error(
    onecollector: LocalCollector,
) -> None:
    onecollector.script(
        Answer(
            401,
            headers={"Collector-Error": "Invalid Tenant Token"},
            body={"acc": 0, "efi": {"InvalidTenantToken": "all"}},
        )
    )

    result = _cli(
        "send", "--instrumentation-key", KEY, "--endpoint", onecollector.endpoint
    )

    assert result.returncode == 1
    assert "status:          401" in result.stdout
    assert "Collector-Error: Invalid Tenant Token" in result.stdout
    assert "InvalidTenantToken" in result.stdout


def test_send_refuses_bad_input_clearly() -> None:
    no_hyphen = _cli("send", "--instrumentation-key", "nohyphen")
    bad_data = _cli("send", "--instrumentation-key", KEY, "--data", "{")
    keyed_url = _cli(
        "send", "--instrumentation-key", KEY, "--endpoint", f"http://h/?apikey={KEY}"
    )

    assert no_hyphen.returncode == 2 and "instrumentation_key" in no_hyphen.stderr
    assert bad_data.returncode == 2 and "--data" in bad_data.stderr
    assert keyed_url.returncode == 2 and "x-apikey" in keyed_url.stderr
    assert KEY not in keyed_url.stderr + keyed_url.stdout


def test_collector_command_prints_each_accepted_event() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "onecollector_logging", "collector"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        endpoint = banner.split()[-1]
        envelope = {
            "ver": "4.0",
            "name": "Contoso.Cli.Check",
            "time": "2026-12-03T10:11:12.345Z",
            "iKey": f"o:{TENANT}",
            "data": {"k": "v"},
        }
        answer = requests.post(
            endpoint,
            data=json.dumps(envelope),
            headers={
                "Content-Type": "application/x-json-stream",
                "x-apikey": KEY,
            },
            timeout=10,
        )
        printed: List[str] = [process.stdout.readline()]
    finally:
        process.terminate()
        process.communicate(timeout=10)

    assert answer.status_code == 200
    assert json.loads(printed[0])["name"] == "Contoso.Cli.Check"


def _modes(root: Path) -> Dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.lstat().st_mode)
        for path in root.rglob("*")
    }


def test_cache_commands_leave_a_directory_that_is_not_a_cache_alone(
    onecollector: LocalCollector, tmp_path: Path
) -> None:
    # "photos" is a valid tenant id: only the missing lock file tells it apart.
    photos = tmp_path / "photos"
    photos.mkdir()
    photos.chmod(0o755)
    (photos / "a.jpg").write_bytes(b"\xff\xd8\xff")
    before = _modes(tmp_path)

    shown = _cli("cache", "stats", "--cache-dir", str(tmp_path))
    purged = _cli("cache", "purge", "--yes", "--cache-dir", str(tmp_path))
    flushed = _cli(
        "cache",
        "flush",
        "--cache-dir",
        str(tmp_path),
        "--instrumentation-key",
        "photos-0001",
        "--endpoint",
        onecollector.endpoint,
    )

    assert _modes(tmp_path) == before
    for result in (shown, purged):
        assert result.returncode == 0, result.stderr
        assert f"no cache found in {tmp_path}" in result.stdout
        assert "photos" not in result.stdout
    assert flushed.returncode == 0, flushed.stderr
    assert f"nothing cached for tenant photos under {tmp_path}" in flushed.stdout
    assert onecollector.requests == []


def test_every_argument_of_every_command_has_help() -> None:
    parser = _parser()
    commands = next(
        action
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )

    silent = [
        f"{name} {action.option_strings or action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help
    ]

    assert sorted(commands.choices) == ["cache", "collector", "demo", "send"]
    assert silent == []
