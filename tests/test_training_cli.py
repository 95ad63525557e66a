"""`birdd train` as a user runs it: the help lists the recipes; bad data is one line, exit 2."""

from __future__ import annotations

import pytest
from birdd_testing import run_birdd

pytestmark = pytest.mark.system  # every test starts birdd in a fresh process


def test_train_help_lists_the_recipes():
    result = run_birdd("train", "--help")
    assert result.returncode == 0, result.stderr
    assert "head" in result.stdout and "RECIPE" in result.stdout
    assert "train a model on labelled recordings" in run_birdd("--help").stdout


def test_train_without_a_recipe_prints_the_help_and_exits_2():
    result = run_birdd("train")
    assert result.returncode == 2 and "head" in result.stdout


def test_data_without_class_folders_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_birdd("train", "head", str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "has no class folders" in errors[0], result.stderr


def test_a_missing_data_path_is_one_line_and_exit_2(tmp_path):
    result = run_birdd("train", "head", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "not found: check the path" in result.stderr
