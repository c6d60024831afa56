"""Bad input: one line naming the file and the culprit, exit status 2, nothing written."""

from __future__ import annotations

import socket

import pytest
from conftest import run_grid

GOOD = (
    "name: bad\nmodel: tiny\nlimit: 2\n"
    "base: {device: cpu, dataset: textvqa, batch_size: 1, image_size: 224, seq_len: 200, optimization: fp32}\n"
    "sweeps:\n  batch: {batch_size: [1, 2]}\n"
)

CASES = {
    "broken_yaml": ("name: [unclosed\n", "broken YAML"),
    "unknown_key": (GOOD + "colour: blue\n", "colour"),
    "unknown_dataset": (GOOD.replace("dataset: textvqa", "dataset: mmmu"), "mmmu"),
    "unknown_device": (GOOD.replace("device: cpu", "device: tpu"), "tpu"),
    "unknown_optimization": (GOOD.replace("optimization: fp32", "optimization: int3"), "int3"),
    "non_positive_size": (GOOD.replace("image_size: 224", "image_size: 0"), "base.image_size"),
    "negative_batch_in_sweep": (GOOD.replace("[1, 2]", "[1, -2]"), "sweeps.batch.batch_size"),
    "empty_sweep_list": (GOOD.replace("[1, 2]", "[]"), "sweeps.batch.batch_size"),
    "empty_sweep": (GOOD.replace("batch: {batch_size: [1, 2]}", "batch: {}"), "sweeps.batch"),
    "unknown_dataset_source_task": (GOOD + "datasets: {mmmu: synthetic}\n", "datasets.mmmu"),
    "published_unknown_task": (GOOD + "published: {source: card, figures: {mmmu: 50}}\n", "published.figures.mmmu"),
    "published_not_a_number": (GOOD + "published: {source: card, figures: {vqav2: high}}\n", "published.figures.vqav2"),
    "published_without_source": (GOOD + "published: {figures: {vqav2: 74.2}}\n", "published: needs `source`"),
    "split_not_a_string": (GOOD + "datasets: {textvqa: {source: x, split: 2021}}\n", "datasets.textvqa.split"),
    "template_unknown_field": (GOOD + "tasks: {textvqa: {template: '{q} please'}}\n", "tasks.textvqa.template"),
    "template_broken_brace": (GOOD + "tasks: {textvqa: {template: 'what {question'}}\n", "tasks.textvqa.template"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_job_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    text, culprit = CASES[case]
    job = tmp_path / "job.yaml"
    job.write_text(text)
    out = tmp_path / "out"
    result = run_grid("--job", str(job), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(job) in lines[0] and culprit in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_job_file(tmp_path):
    result = run_grid("--job", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"fuyu_ray: {tmp_path / 'nope.yaml'}: job file not found"
    assert not (tmp_path / "out").exists()


def test_unreachable_address_is_one_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD)
    result = run_grid("--job", str(job), "--out", str(tmp_path / "out"), "--address", "127.0.0.1:9")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "127.0.0.1:9" in result.stderr and "unreachable" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["nosuchscheme://bucket/x", "{file}"])
def test_bad_out_is_one_line(tmp_path, out):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD)
    a_file = tmp_path / "plain-file"
    a_file.write_text("x")
    result = run_grid("--job", str(job), "--out", out.format(file=a_file))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--out" in result.stderr


def test_an_address_where_something_but_not_ray_listens_is_one_final_line(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(GOOD)
    with socket.socket() as listener:  # accepts TCP, so the quick reachability check passes
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        result = run_grid(
            "--job",
            str(job),
            "--out",
            str(tmp_path / "out"),
            "--address",
            address,
            env={"FUYU_RAY_CONNECT_TIMEOUT_S": "5"},
        )
    assert result.returncode == 2
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"fuyu_ray: --address '{address}': no Ray cluster answered within 5.0 s"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "statuses, interrupted, aborted, expected",
    [
        (["ok", "skipped", "ok"], False, None, 0),
        (["ok", "failed"], False, None, 1),
        (["ok", "oom"], False, None, 1),
        (["timeout", "skipped"], False, None, 1),
        (["ok", "ok"], False, "OSError: lost", 1),
        (["ok", None], True, None, 130),
        (["failed"], True, None, 130),
        ([], False, None, 0),
    ],
    ids=["ok-skipped", "failed", "oom", "timeout", "aborted", "interrupted", "interrupted-beats-failed", "empty"],
)
def test_the_exit_status_table(statuses, interrupted, aborted, expected):
    from fuyu_ray.driver.grid import exit_status

    assert exit_status(statuses, interrupted, aborted) == expected
