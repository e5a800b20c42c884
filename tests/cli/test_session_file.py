"""Session files (TOML): what a networked coordinator runs, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhive.cli.session_file import load_session_file
from fedhive.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "examples" / "session.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "session.toml"
    path.write_text(text)
    return path


def test_the_example_session_file_loads() -> None:
    s = load_session_file(EXAMPLE)
    assert (s.config.rounds, s.config.min_clients, s.config.model) == (20, 5, "simple-dnn:128,64")
    assert (s.data_settings["dataset"], s.data_settings["partition"]) == ("digits", "dirichlet:0.5")
    # what demo clients check their own options against, carried to them in ENABLE
    assert s.config.data == {"dataset": "digits", "partition": "dirichlet:0.5", "test_fraction": 0.2}


def test_csv_paths_are_relative_to_the_file_and_imply_the_csv_dataset(tmp_path: Path) -> None:
    (tmp_path / "holdout.csv").write_text("a,y\n1,0\n2,1\n")
    s = load_session_file(write(tmp_path, 'rounds = 2\n[data]\ncsv = "holdout.csv"\nlabel = "y"\n'))
    assert s.data_settings["dataset"] == "csv" and s.data_settings["csv"] == str(tmp_path / "holdout.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = \n", "invalid TOML"),
        ("roundz = 3\n[data]\n", "unknown setting 'roundz'"),
        ("rounds = 0\n[data]\n", "rounds: Input should be greater than or equal to 1"),
        ('rounds = "ten"\n[data]\n', "rounds: Input should be a valid integer"),
        ("rounds = 3\n", "a [data] table is missing"),
        ("[data]\ndataset = 'digits'\nshuffle = true\n", "unknown setting 'shuffle' in [data]"),
        ("[data]\npartition = 'zipf:2'\n", "zipf"),
        ("model = 'transformer'\n[data]\n", "transformer"),
        ("strategy = 'fedmagic'\n[data]\n", "fedmagic"),
        ("[data]\ncsv = 'missing.csv'\nlabel = 'y'\n", "missing.csv does not exist"),
        ("heartbeat_interval_s = 30\n[data]\n", "heartbeat_timeout_s must be longer"),
        ("[extra]\n[data]\n", "unknown setting 'extra'"),
    ],
)
def test_bad_files_are_one_line_config_errors_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_session_file(write(tmp_path, text))
    text_of_error = str(info.value)
    assert message in text_of_error and "session.toml" in text_of_error and "\n" not in text_of_error


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_session_file(tmp_path / "nope.toml")
