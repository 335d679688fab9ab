"""What a run's identity records for each input it reads."""

from __future__ import annotations

from alignment.core.identity import BUILTIN_DEMO_DIR, input_digest, write_identity
from alignment.data.demo import DEMO_DIR


def test_a_folder_inside_a_run_takes_the_run_fingerprint_and_its_own_path(tmp_path):
    run = tmp_path / "ppo_helpful"
    (run / "snapshots" / "step-4").mkdir(parents=True)
    write_identity(run, {"fingerprint": "abc123", "settings": {}, "inputs": {}})
    assert input_digest(str(run)) == "abc123"
    assert input_digest(str(run / "snapshots" / "step-4")) == "abc123:snapshots/step-4"
    # A new run in the same folder changes the snapshot's digest, so evaluations of it run again.
    write_identity(run, {"fingerprint": "def456", "settings": {}, "inputs": {}})
    assert input_digest(str(run / "snapshots" / "step-4")) == "def456:snapshots/step-4"


def test_a_file_is_known_by_size_and_time_and_a_name_by_nothing(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    assert input_digest(str(data)).startswith("file:3:")
    assert input_digest("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert input_digest(str(tmp_path / "plain_folder")) is None


def test_the_built_in_demo_data_is_an_input_whose_files_are_digested():
    assert BUILTIN_DEMO_DIR == DEMO_DIR
    digest = input_digest("demo")
    assert digest.startswith("demo:") and digest.count("file:") == len(list(DEMO_DIR.glob("*.jsonl"))) == 4
