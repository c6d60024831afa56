"""cluster.yaml: Ray's own launcher checks, offline, on the AWS config and on its on-prem variant.

`ray up` fills in the provider's defaults (prepare_config), then checks the result against
ray/autoscaler/ray-schema.json plus cross-field rules (validate_config), and only then calls the
cloud. The tests run those first two steps from the installed Ray, so a config that passes here
fails at `ray up` only because of the cloud: credentials, capacity, the AMI id.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from conftest import ROOT
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = ROOT / "cluster.yaml"
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
ONPREM_BEGIN = "# --- on-prem variant ---"
ONPREM_END = "# --- end ---"
PIN = re.compile(r'"?([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)==([^\s"]+)"?')


def aws_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def onprem_config() -> dict:
    """The commented block between the markers, each line with its leading "# " taken off."""
    lines = CLUSTER_YAML.read_text().splitlines()
    assert lines.count(ONPREM_BEGIN) == 1 and lines.count(ONPREM_END) == 1
    begin, end = lines.index(ONPREM_BEGIN), lines.index(ONPREM_END)
    assert begin < end
    body = []
    for line in lines[begin + 1 : end]:
        assert line == "#" or line.startswith("# "), f"not a commented line in the on-prem block: {line!r}"
        body.append(line[2:])
    return yaml.safe_load("\n".join(body))


CONFIGS = {"aws": aws_config, "onprem": onprem_config}


def ray_up_checks(config: dict) -> dict:
    """What `ray up` runs before it talks to a provider."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(params=sorted(CONFIGS))
def config(request) -> dict:
    return CONFIGS[request.param]()


# --- Ray's schema and the launcher's own checks -------------------------------------------------


def test_config_as_written_matches_rays_schema(config):
    jsonschema.validate(config, SCHEMA)


def test_config_passes_the_checks_ray_up_runs(config):
    prepared = ray_up_checks(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def broken(mutate):
    def make():
        config = aws_config()
        mutate(config)
        return config

    return make


def _misspell(config):
    config["setup_comands"] = config.pop("setup_commands")


def _no_node_config(config):
    del config["available_node_types"]["gpu.bench"]["node_config"]


def _gpu_as_text(config):
    config["available_node_types"]["gpu.bench"]["resources"]["GPU"] = "1"


def _unknown_head(config):
    config["head_node_type"] = "head.missing"


def _more_min_than_max(config):
    config["max_workers"] = 0


@pytest.mark.parametrize(
    "make, error",
    [
        (broken(_misspell), jsonschema.ValidationError),
        (broken(_no_node_config), jsonschema.ValidationError),
        (broken(_gpu_as_text), jsonschema.ValidationError),
        (broken(_unknown_head), ValueError),
        (broken(_more_min_than_max), ValueError),
    ],
    ids=[
        "misspelled-top-level-key",
        "node-type-without-node_config",
        "gpu-count-as-text",
        "unknown-head-type",
        "min-over-max",
    ],
)
def test_broken_copies_fail_the_launcher_checks(make, error):
    with pytest.raises(error):
        ray_up_checks(make())


def test_config_without_provider_fails_the_schema():
    config = aws_config()
    del config["provider"]
    with pytest.raises(jsonschema.ValidationError, match="'provider' is a required property"):
        jsonschema.validate(config, SCHEMA)
    with pytest.raises(KeyError):
        ray_up_checks(config)


def test_onprem_block_with_node_types_is_refused():
    """The local provider aborts on available_node_types; the block must not grow them."""
    config = onprem_config()
    config["available_node_types"] = aws_config()["available_node_types"]
    with pytest.raises(Exception, match="not supported for on-premise"):
        ray_up_checks(config)


# --- the fields this project relies on ----------------------------------------------------------


def test_aws_provider_fields():
    config = aws_config()
    provider = config["provider"]
    assert config["cluster_name"]
    assert provider["type"] == "aws"
    assert provider["region"]
    assert isinstance(provider["cache_stopped_nodes"], bool)
    zones = provider["availability_zone"].split(",")
    assert zones and all(zone.startswith(provider["region"]) for zone in zones), zones
    assert config["auth"]["ssh_user"] == "ubuntu"


def test_every_node_type_names_an_instance_and_its_resources():
    config = aws_config()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    for name, node_type in types.items():
        assert node_type["node_config"]["InstanceType"], name
        assert node_type["resources"].get("CPU", 0) >= 1, name


def test_one_image_set_by_hand_for_every_node_type():
    """Without an ImageId Ray falls back to an Ubuntu 18.04 DLAMI, too old for fuyu_ray's Python;
    and Ray needs the same Python version on every node."""
    images = {
        node_type["node_config"].get("ImageId", "") for node_type in aws_config()["available_node_types"].values()
    }
    assert len(images) == 1
    assert images.pop().lower() not in ("", "latest_dlami")


def test_gpu_worker_declares_gpu_and_bench_node_and_head_does_not():
    config = aws_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_workers = [t for t in workers.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_workers
    for worker in gpu_workers:
        assert worker["resources"].get("bench_node", 0) >= 1
        # execute.missing_resources skips cuda cells when no live node has a GPU when the driver
        # starts: at least one GPU node has to be up already.
        assert worker.get("min_workers", 0) >= 1
        assert worker["max_workers"] <= config["max_workers"]
    assert head["resources"].get("GPU", 0) == 0
    assert "bench_node" not in head["resources"]


def test_code_and_hugging_face_cache_are_mounted():
    for config in (aws_config(), onprem_config()):
        mounts = config["file_mounts"]
        assert mounts["~/fuyu_ray"] == "."
        assert "~/hf_home" in mounts
        # Anchored, so they only keep these out of the ~/fuyu_ray copy.
        assert {"/.venv", "/hf_home"} <= set(config["rsync_exclude"])
        # One token for every node: Ray 2.60 turns away a node or a submitter without it.
        assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_setup_pins_the_projects_versions(config):
    commands = config["setup_commands"]
    pins = {name: version for command in commands for name, version in PIN.findall(command)}
    assert pins.get("torch") == "2.13.0"
    assert pins.get("transformers") == "5.17.0"
    assert pins.get("ray[default]") == ray.__version__, "the cluster's Ray must equal the launcher's"

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "transformers>=" + pins["transformers"].rsplit(".", 1)[0] + ",<6" in declared, (
        "pyproject's range starts there"
    )
    tested = (ROOT / "constraints.txt").read_text()
    assert "transformers==" + pins["transformers"] in tested, (
        "cluster.yaml and constraints.txt (what make installs) disagree"
    )

    pinned = next(i for i, c in enumerate(commands) if "transformers==" in c)
    editable = next(i for i, c in enumerate(commands) if re.search(r"pip install -e ~/fuyu_ray\b", c))
    assert pinned < editable


def test_head_can_launch_aws_workers():
    assert any("boto3" in command for command in aws_config()["head_setup_commands"])


# --- what `ray start` really receives ----------------------------------------------------------


@pytest.fixture()
def fake_ray(tmp_path):
    """A `ray` on PATH that records its arguments and the Hugging Face environment it got."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    script = bin_dir / "ray"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps({'argv': sys.argv[1:], 'HF_HOME': os.environ.get('HF_HOME'),\n"
        "                        'HF_HUB_OFFLINE': os.environ.get('HF_HUB_OFFLINE'),\n"
        "                        'RAY_AUTH_MODE': os.environ.get('RAY_AUTH_MODE')}) + '\\n')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    home = tmp_path / "home"
    home.mkdir()

    def run(commands: list[str]) -> list[dict]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        env.update(PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", HOME=str(home), RAY_HEAD_IP="10.0.0.10")
        log.unlink(missing_ok=True)
        for command in commands:
            # No ~/.bashrc in this HOME: what reaches `ray start` comes from the command itself.
            subprocess.run(["bash", "-c", command], env=env, check=True, timeout=30, capture_output=True)
        return [json.loads(line) for line in log.read_text().splitlines()]

    return run, home


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_ray_start_gets_the_offline_cache(config, key, fake_ray):
    run, home = fake_ray
    calls = run(config[key])
    assert calls[0]["argv"][:1] == ["stop"], "a restart must stop the old Ray first"
    starts = [c for c in calls if c["argv"][:1] == ["start"]]
    assert len(starts) == 1
    start = starts[0]
    hf_mount = next(remote for remote in config["file_mounts"] if remote.rstrip("/").endswith("hf_home"))
    assert start["HF_HOME"] == hf_mount.replace("~", str(home), 1)
    assert start["HF_HUB_OFFLINE"] == "1"
    assert start["RAY_AUTH_MODE"] == "token", "every node must ask for the cluster's token"
    if key == "head_start_ray_commands":
        assert "--head" in start["argv"]
        assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start["argv"]
    else:
        assert "--address=10.0.0.10:6379" in start["argv"]


def test_onprem_workers_declare_bench_node(fake_ray):
    """The local provider has no node types, so the custom resource travels on `ray start`."""
    run, _ = fake_ray
    config = onprem_config()
    assert config["provider"]["type"] == "local"
    assert config["provider"]["head_ip"] and config["provider"]["worker_ips"]
    start = next(c for c in run(config["worker_start_ray_commands"]) if c["argv"][:1] == ["start"])
    resources = next(a.split("=", 1)[1] for a in start["argv"] if a.startswith("--resources="))
    assert json.loads(resources).get("bench_node", 0) >= 1
