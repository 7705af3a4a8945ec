"""`openharmony download` and model resolution, against a local stand-in for the hub.

The stand-in (tests/hub_stand_in.py) serves the file list of openai/gpt-oss-20b with small
contents on 127.0.0.1; huggingface-hub is pointed at it with HF_ENDPOINT.
"""

from __future__ import annotations

import os
import signal
import time
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants
from typer.testing import CliRunner

from hub_stand_in import COMMIT, HubStandIn
from openharmony.cli import app
from openharmony.download import DownloadError, looks_like_hub_id, resolve_model

REPO = "openai/gpt-oss-20b"
SHARD = "model-00001-of-00002.safetensors"

# The files of openai/gpt-oss-20b on the hub (as listed there).
GPT_OSS_20B_FILES = [
    ".gitattributes", "LICENSE", "README.md", "USAGE_POLICY", "chat_template.jinja",
    "config.json", "generation_config.json", "metal/model.bin",
    "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json", "original/config.json",
    "original/dtypes.json", "original/model.safetensors", "special_tokens_map.json",
    "tokenizer.json", "tokenizer_config.json",
]
# What this engine needs: the Hugging Face layout (written out by hand, not from the patterns).
HF_LAYOUT = {
    "chat_template.jinja", "config.json", "generation_config.json",
    "model-00000-of-00002.safetensors", "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
}


def repo_files() -> dict[str, bytes]:
    """Distinct contents per file; the shards are large enough to be streamed in chunks."""
    files = {name: f"contents of {name}\n".encode() for name in GPT_OSS_20B_FILES}
    for i, name in enumerate(n for n in GPT_OSS_20B_FILES if n.endswith(".safetensors")):
        files[name] = os.urandom(200_000 + 1000 * i)
    return files


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}


@pytest.fixture
def hub(monkeypatch):
    # snapshot_download is given HF_ENDPOINT at call time by openharmony.download.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    files = repo_files()
    with HubStandIn(REPO, files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url + "/")  # a trailing slash is allowed
        yield server


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def error_line(stderr: str) -> str:
    """The one-line error at the end of stderr (after any progress bar), never a traceback."""
    assert "Traceback" not in stderr
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def snapshot(cache: Path) -> Path:
    return cache / "models--openai--gpt-oss-20b" / "snapshots" / COMMIT


def test_downloads_only_the_hugging_face_layout(hub, tmp_path):
    result = run_cli("download", REPO, "--cache-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    folder = snapshot(tmp_path)
    assert result.stdout.strip() == str(folder)
    got = local_files(folder)
    assert set(got) == HF_LAYOUT
    assert all(got[name] == hub.files[name] for name in got)
    fetched = {path.rsplit(f"/resolve/{COMMIT}/", 1)[1]
               for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path}
    assert fetched == HF_LAYOUT  # original/ and metal/ were never requested


def test_model_option_is_the_repo_id(hub, tmp_path):
    for flag in ("--model", "-m"):
        result = run_cli("download", flag, REPO, "--cache-dir", str(tmp_path))
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == str(snapshot(tmp_path))
    result = run_cli("download", REPO, "--model", REPO)
    assert result.exit_code == 2
    assert "'REPO_ID' / '--model'" in result.stderr


def test_original_and_metal_on_request(hub, tmp_path):
    result = run_cli("download", REPO, "--local-dir", str(tmp_path / "m"), "--original",
                     "--metal")
    assert result.exit_code == 0, result.output
    expected = HF_LAYOUT | {"metal/model.bin", "original/config.json", "original/dtypes.json",
                            "original/model.safetensors"}
    got = local_files(tmp_path / "m")
    assert set(got) == expected
    assert all(got[name] == hub.files[name] for name in got)


def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path, monkeypatch):
    # Smaller read chunks than the 10 MB default, so bytes before the drop reach the file.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16_384)
    hub.drop_after[SHARD] = 100_000
    result = run_cli("download", REPO, "--cache-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (snapshot(tmp_path) / SHARD).read_bytes() == hub.files[SHARD]
    gets = hub.gets(SHARD)
    assert len(gets) == 2
    assert "Range" not in gets[0]
    resumed_at = int(gets[1]["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 100_000


def test_interrupted_run_is_completed_by_the_next(hub, tmp_path):
    hub.fail_once.add(SHARD)
    first = run_cli("download", REPO, "--cache-dir", str(tmp_path))
    assert first.exit_code == 1
    assert error_line(first.stderr) == ("error: the hub answered HTTP 500 while downloading "
                                        f"{REPO}; run the same command again to resume")
    assert not (snapshot(tmp_path) / SHARD).exists()

    second = run_cli("download", REPO, "--cache-dir", str(tmp_path))
    assert second.exit_code == 0, second.output
    assert local_files(snapshot(tmp_path)) == {name: hub.files[name] for name in HF_LAYOUT}
    for name in HF_LAYOUT - {SHARD}:  # finished files are not fetched again
        assert len(hub.gets(name)) == 1, name
    assert len(hub.gets(SHARD)) == 2


def test_unknown_repo_is_one_line(hub, tmp_path):
    result = run_cli("download", "nobody/nothing", "--cache-dir", str(tmp_path))
    assert result.exit_code == 1
    assert error_line(result.stderr) == ("error: nobody/nothing was not found on the hub "
                                         "(or is private: set HF_TOKEN)")


def test_bad_repo_id_and_conflicting_folders(tmp_path):
    result = run_cli("download", "not a repo")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: 'not a repo' is not a hub model id")
    result = run_cli("download", "a/b..c")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: 'a/b..c' is not a valid hub model id: Cannot have "
                                     "-- or .. in repo_id: 'a/b..c'.")
    result = run_cli("download", REPO, "--cache-dir", str(tmp_path), "--local-dir",
                     str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --cache-dir and --local-dir exclude each other"


def test_resolve_model(hub, tmp_path, monkeypatch, tiny_checkpoint):
    assert resolve_model(str(tiny_checkpoint)) == tiny_checkpoint
    with pytest.raises(DownloadError, match="model folder not found"):
        resolve_model(str(tmp_path / "missing"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DownloadError, match="not in the local Hugging Face cache"):
        resolve_model(REPO, download=False)
    assert resolve_model(REPO) == snapshot(tmp_path / "cache")  # downloads
    requests_after_download = len(hub.requests)
    assert resolve_model(REPO, download=False) == snapshot(tmp_path / "cache")
    assert len(hub.requests) == requests_after_download  # found in the cache


def test_hub_ids():
    assert looks_like_hub_id("openai/gpt-oss-20b")
    assert looks_like_hub_id("mlx-community/gpt-oss-20b-MXFP4-Q8")
    for name in ("gpt-oss-20b", "./a/b", "/abs/path", "a/b/c", "~/x", "a b/c"):
        assert not looks_like_hub_id(name), name


def _cli_subprocess(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run([sys.executable, "-m", "openharmony", *args],
                          env={**base, "NO_PROXY": "127.0.0.1", **env}, capture_output=True,
                          text=True, timeout=120)


def test_environment_variables_in_a_fresh_process(tmp_path):
    """HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE as huggingface-hub reads them:
    at import, in a new process."""
    cache = tmp_path / "hub-cache"
    with HubStandIn(REPO, repo_files()) as server:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(cache), "HF_TOKEN": "hf_test",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        offline = _cli_subprocess({**env, "HF_HUB_OFFLINE": "1"}, "download", REPO)
        assert offline.returncode == 1
        assert error_line(offline.stderr) == (f"error: {REPO} is not in the local Hugging Face "
                                          "cache and HF_HUB_OFFLINE is set; unset it to "
                                          "download")
        assert server.requests == []

        online = _cli_subprocess(env, "download", REPO)
        assert online.returncode == 0, online.stderr
        assert online.stdout.strip() == str(snapshot(cache))
        assert set(local_files(snapshot(cache))) == HF_LAYOUT
        file_requests = [h for m, p, h in server.requests if "/resolve/" in p]
        assert file_requests and all(h.get("authorization") == "Bearer hf_test"
                                     for h in file_requests)

        seen = len(server.requests)
        cached = _cli_subprocess({**env, "HF_HUB_OFFLINE": "1"}, "download", REPO)
        assert cached.returncode == 0, cached.stderr
        assert cached.stdout.strip() == str(snapshot(cache))
        assert len(server.requests) == seen


def test_ctrl_c_stops_at_once_keeps_complete_files_and_says_how_to_resume(tmp_path):
    """A real SIGINT while a shard is in flight (the stand-in stalls it halfway): the process
    ends at once instead of waiting for the shard, the complete files stay, the partial one
    does not, and the same command then completes the download."""
    cache = tmp_path / "hub-cache"
    files = repo_files()
    with HubStandIn(REPO, files, stall={SHARD}) as server:
        env = {"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(cache),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        process = subprocess.Popen([sys.executable, "-m", "openharmony", "download", REPO],
                                   env={**base, "NO_PROXY": "127.0.0.1", **env},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            config = snapshot(cache) / "config.json"
            deadline = time.monotonic() + 60
            while not (server.gets(SHARD) and config.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.gets(SHARD) and config.exists(), "the download never got going"
            time.sleep(0.5)  # the shard's first half is being written
            process.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            _, stderr = process.communicate(timeout=20)
            stopped_after = time.monotonic() - interrupted
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130, stderr
    assert stopped_after < 10  # the stalled shard would have held it for 120 s
    assert stderr.strip().splitlines()[-1] == ("interrupted: the files already complete are "
                                               "kept; run the same command again to fetch the "
                                               "rest")
    assert config.read_bytes() == files["config.json"]  # complete files are kept
    assert not (snapshot(cache) / SHARD).exists()
    assert not list(cache.rglob("*.incomplete"))  # nothing partial is left behind

    with HubStandIn(REPO, files) as server:
        resumed = _cli_subprocess({"HF_ENDPOINT": server.url, "HF_HUB_CACHE": str(cache),
                                   "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, "download", REPO)
        assert resumed.returncode == 0, resumed.stderr
        assert not server.gets("config.json")  # kept, not fetched again
    assert local_files(snapshot(cache)) == {name: files[name] for name in HF_LAYOUT}
