"""The hub's reference config and its command line: defaults, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

from birdd_testing import REPO

from birdd.hub.cli import build_parser, hub_config, main
from birdd.hub.config import HubConfig


def test_the_reference_hub_yaml_is_the_defaults():
    args = build_parser().parse_args(["serve", "--config", str(REPO / "hub" / "hub.yaml")])
    loaded, default = hub_config(args), HubConfig()
    skip = {"store": {"sqlite"}, "clips": {"dir"}}  # the defaults follow $BIRDD_DATA_DIR
    assert loaded.model_dump(exclude=skip) == default.model_dump(exclude=skip)


def test_flags_override_the_file(tmp_path: Path):
    argv = ["serve", "--mqtt", "mqtt://hub@broker:1884/farm", "--postgres", "host=db dbname=b"]
    config = hub_config(build_parser().parse_args([*argv, "--client-id", "hub-2"]))
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("broker", 1884, "hub")
    assert config.mqtt.topic_prefixes == ["farm"] and config.mqtt.client_id == "hub-2"
    assert config.store.postgres == "host=db dbname=b"


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys):
    bad = tmp_path / "hub.yaml"
    bad.write_text("mqtt: {topic_prefixes: ['a/#']}\n")
    assert main(["serve", "--config", str(bad)]) == 2
    assert main(["serve", "--postgres", "host=x password=y", "--no-web"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert "topic prefixes such as 'birdd'" in errors[0]
    assert "put no password in the DSN" in errors[1] and len(errors) == 2
