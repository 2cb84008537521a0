"""``pyralog genkey | genpsk | pubkey`` through the installed console script, like ``wg``.

Each run of the console script costs a Python start-up, so the module runs every
invocation it needs once, concurrently, in a module-scoped fixture; the tests then check
the recorded results.
"""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from processes import console_script, needs_script
from pyralog import __version__
from pyralog.wireguard.keys import PresharedKey, PrivateKey

PYRALOG = console_script("pyralog")
WG = shutil.which("wg") or ("/usr/bin/wg" if os.path.exists("/usr/bin/wg") else None)

pytestmark = needs_script("pyralog")
needs_wg = pytest.mark.skipif(WG is None, reason="wireguard-tools `wg` is not installed")

# A canonical key: 43 base64 characters, the last with its two padding bits zero, then '='.
KEY_LINE = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=\n")
WARNING = "Warning: writing to world accessible file."
WARNING_LINES = [WARNING, "Consider setting the umask to 077 and trying again."]
B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# RFC 7748 section 6.1, Alice. The scalar is clamped first, as wg would store it.
ALICE = PrivateKey(
    bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
)
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def _non_canonical_key() -> str:
    text = PrivateKey.generate().to_base64()
    return text[:42] + B64_ALPHABET[B64_ALPHABET.index(text[42]) | 1] + "="


BAD_INPUTS: dict[str, bytes] = {
    "garbage": b"hello, world\n",
    "empty": b"",
    "non-base64-44": b"!" * 43 + b"=\n",
    "non-canonical": _non_canonical_key().encode() + b"\n",
    "binary": b"\xff\xfe\x00\x80" * 11,
    "too-long": b"A" * 10_000,
}

# (umask, command, program) for ``program command > file`` run from a shell.
FILE_RUNS: list[tuple[str, str, str]] = [
    ("022", "genkey", "pyralog"),
    ("022", "genpsk", "pyralog"),
    ("077", "genkey", "pyralog"),
    ("077", "genpsk", "pyralog"),
    ("027", "genkey", "pyralog"),
]
WG_UMASKS = ["002", "007", "027"]
if WG is not None:
    FILE_RUNS += [(u, "genkey", p) for u in WG_UMASKS for p in ("pyralog", "wg")]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class FileResult:
    stderr: str
    mode: int
    content: str


def run(*args: str, stdin: bytes = b"") -> Result:
    done = subprocess.run(
        [str(PYRALOG), *args], input=stdin, capture_output=True, timeout=60, check=False
    )
    return Result(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def run_to_file(command: str, path: Path, umask: str, program: str) -> FileResult:
    """Run ``program command > path`` from a shell under ``umask``."""
    exe = WG if program == "wg" else str(PYRALOG)
    assert exe is not None
    done = subprocess.run(
        ["sh", "-c", f'umask {umask} && exec "$0" {command} > "$1"', exe, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return FileResult(done.stderr, path.stat().st_mode & 0o777, path.read_text())


@dataclass
class Runs:
    plain: dict[str, Result]
    files: dict[tuple[str, str, str], FileResult]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    jobs: dict[str, Callable[[], Result]] = {
        "genkey-1": lambda: run("genkey"),
        "genkey-2": lambda: run("genkey"),
        "genpsk": lambda: run("genpsk"),
        "version": lambda: run("--version"),
        "no-command": lambda: run(),
        "alice": lambda: run("pubkey", stdin=ALICE.to_base64().encode()),
    }
    for name, data in BAD_INPUTS.items():
        jobs[f"bad:{name}"] = functools.partial(run, "pubkey", stdin=data)
    base = tmp_path_factory.mktemp("keyfiles")
    with ThreadPoolExecutor(max_workers=8) as pool:
        plain_futures = {name: pool.submit(job) for name, job in jobs.items()}
        file_futures = {
            spec: pool.submit(run_to_file, spec[1], base / "-".join(spec), spec[0], spec[2])
            for spec in FILE_RUNS
        }
        plain = {name: f.result() for name, f in plain_futures.items()}
        files = {spec: f.result() for spec, f in file_futures.items()}
    # Second phase: pubkey of genkey's output.
    plain["pubkey"] = run("pubkey", stdin=plain["genkey-1"].stdout.encode())
    return Runs(plain, files)


# --------------------------------------------------------------------------- genkey/genpsk


@pytest.mark.parametrize("name", ["genkey-1", "genkey-2", "genpsk"])
def test_generates_one_key_line(runs: Runs, name: str) -> None:
    done = runs.plain[name]
    assert done.returncode == 0
    assert KEY_LINE.fullmatch(done.stdout), done.stdout
    assert len(done.stdout) == 45
    assert done.stderr == ""  # stdout is a pipe: no warning


def test_genkey_is_a_fresh_clamped_private_key(runs: Runs) -> None:
    first, second = runs.plain["genkey-1"].stdout, runs.plain["genkey-2"].stdout
    assert first != second
    for out in (first, second):
        text = out.strip()
        key = PrivateKey.from_base64(text)
        assert key.to_base64() == text  # already clamped, as wg writes it
        raw = base64.b64decode(text)
        assert raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40


def test_genpsk_is_a_preshared_key(runs: Runs) -> None:
    text = runs.plain["genpsk"].stdout.strip()
    assert PresharedKey.from_base64(text).to_base64() == text


# --------------------------------------------------------------------------- pubkey


def test_pubkey_of_genkey(runs: Runs) -> None:
    private = runs.plain["genkey-1"].stdout
    done = runs.plain["pubkey"]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert KEY_LINE.fullmatch(done.stdout), done.stdout
    assert done.stdout.strip() == PrivateKey.from_base64(private.strip()).public_key.to_base64()
    if WG is not None:
        wg = subprocess.run(
            [WG, "pubkey"], input=private, capture_output=True, text=True, timeout=10, check=True
        )
        assert wg.stdout == done.stdout


def test_pubkey_rfc7748_alice_without_trailing_newline(runs: Runs) -> None:
    done = runs.plain["alice"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == base64.b64encode(ALICE_PUBLIC).decode() + "\n"


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_pubkey_rejects_bad_input(runs: Runs, name: str) -> None:
    done = runs.plain[f"bad:{name}"]
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pyralog pubkey:")
    assert done.stderr.endswith("\n")
    assert "Traceback" not in done.stderr + done.stdout


@needs_wg
def test_wg_rejects_the_same_inputs() -> None:
    assert WG is not None
    for name, data in BAD_INPUTS.items():
        wg = subprocess.run([WG, "pubkey"], input=data, capture_output=True, timeout=10)
        assert wg.returncode != 0, name


# --------------------------------------------------------------------------- the command


def test_no_command_exits_2(runs: Runs) -> None:
    done = runs.plain["no-command"]
    assert done.returncode == 2
    assert done.stdout == ""
    assert "genkey" in done.stderr  # the usage names the commands
    assert "Traceback" not in done.stderr


def test_version(runs: Runs) -> None:
    done = runs.plain["version"]
    assert done.returncode == 0
    assert done.stdout == f"pyralog {__version__}\n"
    assert done.stderr == ""


# --------------------------------------------------------------------------- file warnings


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_world_readable_file_warns(runs: Runs, command: str) -> None:
    done = runs.files[("022", command, "pyralog")]
    assert done.mode == 0o644
    assert done.stderr.splitlines() == WARNING_LINES
    assert KEY_LINE.fullmatch(done.content)  # the key is written anyway


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_private_file_does_not_warn(runs: Runs, command: str) -> None:
    done = runs.files[("077", command, "pyralog")]
    assert done.mode == 0o600
    assert done.stderr == ""
    assert KEY_LINE.fullmatch(done.content)


def test_group_readable_file_is_not_world_accessible(runs: Runs) -> None:
    # wg warns only when others have access (S_IRWXO); a 0640 file is not world accessible.
    done = runs.files[("027", "genkey", "pyralog")]
    assert done.mode == 0o640
    assert WARNING not in done.stderr
    assert KEY_LINE.fullmatch(done.content)


@needs_wg
@pytest.mark.parametrize("umask", WG_UMASKS)
def test_warning_matches_wg(runs: Runs, umask: str) -> None:
    ours = runs.files[(umask, "genkey", "pyralog")]
    theirs = runs.files[(umask, "genkey", "wg")]
    assert ours.mode == theirs.mode
    wg_warns, ours_warns = WARNING in theirs.stderr, WARNING in ours.stderr
    assert ours_warns == wg_warns, f"umask {umask}: wg warns={wg_warns}, pyralog={ours_warns}"
