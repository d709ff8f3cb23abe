import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("no_proxy", "127.0.0.1,localhost")


import pytest  # noqa: E402


@pytest.fixture()
def hf(tmp_path, monkeypatch):
    """Hugging Face `datasets`, offline, its caches in tmp_path: `hf(files)` loads parquet
    files (a path or a list of paths) as one split."""
    for name, value in [("HF_DATASETS_OFFLINE", "1"), ("HF_HUB_OFFLINE", "1"),
                        ("HF_HOME", str(tmp_path / "hf")),
                        ("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))]:
        monkeypatch.setenv(name, value)
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)

    def load(files):
        files = [str(f) for f in files] if isinstance(files, (list, tuple)) else str(files)
        return datasets.load_dataset("parquet", data_files=files, split="train",
                                     cache_dir=str(tmp_path / "hf" / "cache"))
    return load


def segments() -> set[str]:
    """datamill's shared-memory segments in /dev/shm."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("datamill-")}


@pytest.fixture()
def no_shm_segment_left():
    """The test leaves no segment of its own in /dev/shm (others' may come and go)."""
    import time
    before = segments()
    yield
    deadline = time.monotonic() + 5
    while segments() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not segments() - before
